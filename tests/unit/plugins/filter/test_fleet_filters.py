# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""worker_nodes (the node names of a host's celery_workers) and fleet_health (the health check's judgement):
plain dicts shaped as celery_worker_info, celery_queue_info and celery_events_info return them."""

import re

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.celeryops.fleet.plugins.filter.fleet import FilterModule, fleet_health, worker_nodes


def test_node_names_default_to_name_at_host_as_the_worker_role_starts_them():
    workers = [{'name': 'default', 'queues': ['celery']}, {'name': 'reports', 'node': 'rep@elsewhere'},
               {'name': 'spare', 'node': None}]
    assert worker_nodes(workers, 'web1') == ['default@web1', 'rep@elsewhere', 'spare@web1']


def test_no_workers_give_no_nodes():
    assert worker_nodes([], 'web1') == []
    assert worker_nodes(None, 'web1') == []
    assert worker_nodes((), 'web1') == []


@pytest.mark.parametrize('workers, host, message', [
    ('default', 'web1', 'worker_nodes: celery_workers must be a list of dicts, got str'),
    ({'name': 'default'}, 'web1', 'worker_nodes: celery_workers must be a list of dicts, got dict'),
    (['default'], 'web1', 'worker_nodes: celery_workers[0] must be a dict, got str'),
    ([{'name': 'a'}, {'queues': ['q']}], 'web1', 'worker_nodes: celery_workers[1] has no name (and no node)'),
    ([{'name': ''}], 'web1', 'worker_nodes: celery_workers[0] has no name (and no node)'),
    ([{'name': 'a', 'node': ''}], 'web1', "worker_nodes: celery_workers[0].node must be a non-empty string, got ''"),
    ([{'name': 'a', 'node': 5}], 'web1', 'worker_nodes: celery_workers[0].node must be a non-empty string, got int'),
    ([{'name': 'a'}], None, 'worker_nodes: the inventory host must be a non-empty string, got NoneType'),
    ([{'name': 'a'}], '', "worker_nodes: the inventory host must be a non-empty string, got ''"),
])
def test_what_is_not_a_list_of_workers_is_named(workers, host, message):
    with pytest.raises(AnsibleFilterError) as caught:
        worker_nodes(workers, host)
    assert str(caught.value) == message


def test_the_filters_are_registered():
    assert sorted(FilterModule().filters()) == ['fleet_health', 'worker_nodes']


def expected(*nodes):
    """Expected nodes as the playbooks gather them: (host, node, queues) each."""
    return [{'host': host, 'node': node, 'queues': list(queues), 'program': ''} for host, node, queues in nodes]


def answered(workers, missing=(), duplicates=(), unexpected=()):
    """A celery_worker_info result: node -> its reply (queues, active)."""
    return {'workers': workers, 'missing': list(missing), 'duplicates': list(duplicates), 'unexpected': list(unexpected)}


def reply(queues, active=0):
    return {'online': True, 'queues': list(queues), 'active': [{'id': str(index)} for index in range(active)]}


def queue(name, messages, unacked=0):
    return {'name': name, 'messages': messages, 'unacked': unacked}


FLEET = expected(('web1', 'default@web1', ['celery']), ('web1', 'reports@web1', ['reports', 'shared']),
                 ('web2', 'default@web2', ['celery']))
HEALTHY = answered({'default@web1': reply(['celery'], active=2), 'reports@web1': reply(['reports', 'shared']),
                    'default@web2': reply(['celery'])})
QUEUES = [queue('celery', 12, unacked=2), queue('reports', 0), queue('shared', 3, unacked=None)]


def test_a_healthy_fleet_gives_one_aligned_row_per_node_and_a_line_per_queue():
    health = fleet_health(FLEET, HEALTHY, queues=QUEUES)
    assert health['healthy'] is True and health['problems'] == [] and health['events'] is None
    assert health['rows'][1] == {'host': 'web1', 'node': 'reports@web1', 'ok': True, 'status': 'ok',
                                 'queues': 'reports,shared', 'active': 0, 'depth': 3}
    assert health['table'] == [
        'HOST  NODE          STATUS  QUEUES          ACTIVE  DEPTH',
        'web1  default@web1  ok      celery          2       12',
        'web1  reports@web1  ok      reports,shared  0       3',
        'web2  default@web2  ok      celery          0       12',
        'queue celery: 12 ready, 2 unacked',
        'queue reports: 0 ready, 0 unacked',
        'queue shared: 3 ready, ? unacked',
    ]
    assert health['queues'][0] == {'name': 'celery', 'messages': 12, 'unacked': 2, 'limit': None, 'ok': True, 'status': 'ok'}


def test_a_node_that_does_not_answer_or_consume_is_named_with_its_host():
    workers = answered({'default@web1': reply(['celery']), 'reports@web1': reply(['reports'])}, missing=['default@web2'])
    health = fleet_health(FLEET, workers, queues=QUEUES)
    assert health['healthy'] is False
    assert health['problems'] == ['reports@web1 (host web1): not consuming shared', 'default@web2 (host web2): not answering']
    missing = health['rows'][2]
    assert (missing['status'], missing['queues'], missing['active'], missing['depth']) == ('not answering', '-', '-', 12)
    assert health['table'] == [
        'HOST  NODE          STATUS                QUEUES   ACTIVE  DEPTH',
        'web1  default@web1  ok                    celery   0       12',
        'web1  reports@web1  not consuming shared  reports  0       3',
        'web2  default@web2  not answering         -        -       12',
        'queue celery: 12 ready, 2 unacked',
        'queue reports: 0 ready, 0 unacked',
        'queue shared: 3 ready, ? unacked',
        'UNHEALTHY reports@web1 (host web1): not consuming shared',
        'UNHEALTHY default@web2 (host web2): not answering',
    ]


def test_a_drained_node_names_every_queue_it_left():
    workers = answered(dict(HEALTHY['workers'], **{'reports@web1': reply([])}))
    row = fleet_health(FLEET, workers, queues=QUEUES)['rows'][1]
    assert (row['status'], row['queues'], row['depth']) == ('not consuming reports,shared', '', 3)


def test_a_shared_name_and_failed_tasks_add_to_the_status_in_order():
    events = {'failures_total': 3, 'failures': [{'name': 'proj.add', 'hostname': 'default@web1'},
                                                {'name': 'proj.add', 'hostname': 'default@web1'},
                                                {'name': 'proj.mul', 'hostname': 'reports@web1'}]}
    workers = answered(dict(HEALTHY['workers'], **{'reports@web1': reply(['reports'])}), duplicates=['default@web1', 'reports@web1'])
    health = fleet_health(FLEET, workers, queues=QUEUES, events=events, events_window=6)
    assert [row['status'] for row in health['rows']] == [
        'name used by several workers; 2 failed task(s)',
        'not consuming shared; name used by several workers; 1 failed task(s)',
        'ok']
    assert health['events'] == {'failures': 3, 'ok': False,
                                'status': '3 task(s) failed in the last 6 s: proj.add on default@web1, proj.mul on reports@web1'}
    assert health['problems'][-1] == health['events']['status']


def test_a_not_answering_node_is_not_also_said_to_consume_nothing():
    health = fleet_health(FLEET[:1], answered({}, missing=['default@web1'], duplicates=['default@web1']), queues=QUEUES)
    assert health['rows'][0]['status'] == 'not answering; name used by several workers'


def test_an_event_window_without_failures_is_a_passing_row_and_no_window_is_none():
    health = fleet_health(FLEET, HEALTHY, queues=QUEUES, events={'failures_total': 0, 'failures': []})
    assert health['events'] == {'failures': 0, 'ok': True, 'status': 'ok'} and health['healthy'] is True
    assert fleet_health(FLEET, HEALTHY, queues=QUEUES)['events'] is None


def test_failures_on_nodes_nobody_expects_count_in_the_window_only():
    events = {'failures_total': 25, 'failures': [{'name': 'proj.add', 'hostname': 'old@gone'}]}
    health = fleet_health(FLEET, HEALTHY, queues=QUEUES, events=events)
    assert all(row['ok'] for row in health['rows'])
    assert health['problems'] == ['25 task(s) failed in the last 10 s: proj.add on old@gone']


def test_unexpected_nodes_are_listed_and_fail_only_when_asked():
    workers = answered(dict(HEALTHY['workers'], **{'stray@web9': reply(['celery', 'other'], active=1)}), unexpected=['stray@web9'])
    queues = QUEUES + [queue('other', 5)]
    health = fleet_health(FLEET, workers, queues=queues)
    assert health['rows'][-1] == {'host': '-', 'node': 'stray@web9', 'ok': True, 'status': 'unexpected',
                                  'queues': 'celery,other', 'active': 1, 'depth': 17}
    assert health['healthy'] is True
    strict = fleet_health(FLEET, workers, queues=queues, fail_on_unexpected=True)
    assert strict['problems'] == ['stray@web9 (host -): unexpected']


def test_an_unexpected_node_without_queues_or_active_shows_empty_cells():
    workers = answered(dict(HEALTHY['workers'], **{'bare@x': {'online': True}}), unexpected=['bare@x'])
    row = fleet_health(FLEET, workers, queues=QUEUES)['rows'][-1]
    assert (row['queues'], row['active'], row['depth']) == ('', 0, 0)


def test_expected_nodes_without_queues_are_judged_on_answering_and_counted_on_what_they_consume():
    nodes = expected(('web3', 'legacy@web3', []))
    health = fleet_health(nodes, answered({'legacy@web3': reply(['celery', 'unread'])}), queues=QUEUES)
    assert health['rows'][0]['status'] == 'ok' and health['rows'][0]['depth'] == 12


@pytest.mark.parametrize('max_messages, per_queue, over', [
    (None, {}, []),
    ('', {}, []),
    (10, {}, ['celery']),
    ('10', {}, ['celery']),
    (12, {}, []),
    (0, {}, ['celery', 'shared']),
    (10, {'celery': None}, []),
    (10, {'celery': ''}, []),
    (None, {'shared': 2, 'reports': '0'}, ['shared']),
    (100, {'shared': '2'}, ['shared']),
    (2.0, {}, ['celery', 'shared']),
])
def test_queue_thresholds_global_then_per_queue(max_messages, per_queue, over):
    health = fleet_health(FLEET, HEALTHY, queues=QUEUES, max_messages=max_messages, queue_max_messages=per_queue)
    assert [row['name'] for row in health['queues'] if not row['ok']] == over
    assert health['healthy'] is (not over)


def test_a_full_queue_says_by_how_much_and_keeps_its_limit_as_given():
    health = fleet_health(FLEET, HEALTHY, queues=QUEUES, max_messages='10')
    assert health['queues'][0] == {'name': 'celery', 'messages': 12, 'unacked': 2, 'limit': '10', 'ok': False,
                                   'status': '12 ready messages, more than 10'}
    assert health['problems'] == ['queue celery: 12 ready messages, more than 10']
    assert health['table'][4:] == ['queue celery: 12 ready, 2 unacked - 12 ready messages, more than 10',
                                   'queue reports: 0 ready, 0 unacked',
                                   'queue shared: 3 ready, ? unacked',
                                   'UNHEALTHY queue celery: 12 ready messages, more than 10']


def test_problems_list_nodes_then_queues_then_the_event_window():
    workers = answered({}, missing=[entry['node'] for entry in FLEET])
    events = {'failures_total': 1, 'failures': [{'name': 'proj.add', 'hostname': 'default@web1'}]}
    health = fleet_health(FLEET, workers, queues=QUEUES, events=events, max_messages=1)
    assert health['problems'] == [
        'default@web1 (host web1): not answering; 1 failed task(s)', 'reports@web1 (host web1): not answering',
        'default@web2 (host web2): not answering', 'queue celery: 12 ready messages, more than 1',
        'queue shared: 3 ready messages, more than 1', '1 task(s) failed in the last 10 s: proj.add on default@web1']


def test_queues_not_read_count_as_empty():
    health = fleet_health(FLEET, HEALTHY)
    assert [row['depth'] for row in health['rows']] == [0, 0, 0] and health['queues'] == []
    assert health['table'][-1] == 'web2  default@web2  ok      celery          0       0'


def test_the_table_widens_to_its_longest_cell():
    nodes = expected(('a-very-long-host-name', 'n@a-very-long-host-name', ['q']))
    health = fleet_health(nodes, answered({'n@a-very-long-host-name': reply(['q'])}), queues=[queue('q', 1234567)])
    assert health['table'][:2] == ['HOST                   NODE                     STATUS  QUEUES  ACTIVE  DEPTH',
                                   'a-very-long-host-name  n@a-very-long-host-name  ok      q       0       1234567']


@pytest.mark.parametrize('arguments, message', [
    (dict(expected='x', workers=HEALTHY), 'fleet_health: expected (the expected nodes) must be a list, got str'),
    (dict(expected=FLEET, workers=[]), 'fleet_health: workers (the result of celery_worker_info) must be a dict, got list'),
    (dict(expected=['web1'], workers=HEALTHY), 'fleet_health: expected[0] must be a dict, got str'),
    (dict(expected=[{'host': 'web1'}], workers=HEALTHY), 'fleet_health: expected[0].node must be a non-empty string, got NoneType'),
    (dict(expected=[{'node': 'a@b', 'queues': 'celery'}], workers=HEALTHY), 'fleet_health: expected[0].queues must be a list, got str'),
    (dict(expected=FLEET, workers=dict(HEALTHY, missing='default@web2')), 'fleet_health: workers.missing must be a list, got str'),
    (dict(expected=FLEET, workers=HEALTHY, queues={'celery': 1}), 'fleet_health: queues must be a list, got dict'),
    (dict(expected=FLEET, workers=HEALTHY, queues=[{'name': 'celery'}]), 'fleet_health: queues[0].messages must be a number, got NoneType'),
    (dict(expected=FLEET, workers=HEALTHY, queues=[{'messages': 1}]), 'fleet_health: queues[0].name must be a non-empty string, got NoneType'),
    (dict(expected=FLEET, workers=HEALTHY, queues=QUEUES, max_messages='lots'),
     "fleet_health: max_messages must be a whole number of messages, got 'lots'"),
    (dict(expected=FLEET, workers=HEALTHY, queues=QUEUES, max_messages=True), 'fleet_health: max_messages must be a whole number of messages, got bool'),
    (dict(expected=FLEET, workers=HEALTHY, queues=QUEUES, queue_max_messages={'shared': 2.5}),
     "fleet_health: queue_max_messages['shared'] must be a whole number of messages, got float"),
    (dict(expected=FLEET, workers=HEALTHY, queue_max_messages=['celery']), 'fleet_health: queue_max_messages must be a dict, got list'),
    (dict(expected=FLEET, workers=HEALTHY, fail_on_unexpected='yes'), 'fleet_health: fail_on_unexpected must be a boolean, got str'),
    (dict(expected=FLEET, workers=HEALTHY, events='none'), 'fleet_health: events (the result of celery_events_info) must be a dict, got str'),
    (dict(expected=FLEET, workers=HEALTHY, events={'failures_total': 1, 'failures': ['x']}), 'fleet_health: events.failures[0] must be a dict, got str'),
])
def test_what_is_not_shaped_as_the_modules_return_it_is_named(arguments, message):
    with pytest.raises(AnsibleFilterError) as caught:
        fleet_health(**arguments)
    assert str(caught.value) == message


NOW = 1800000000.0


def busy(*tasks):
    """A reply whose active tasks are (name, id, time_start) each."""
    return {'online': True, 'queues': ['celery'],
            'active': [{'name': name, 'id': task_id, 'time_start': started} for name, task_id, started in tasks]}


def test_tasks_running_longer_than_max_task_runtime_are_unhealthy_rows_naming_node_task_id_and_runtime():
    workers = answered({'default@web1': busy(('proj.slow', 'id-1', NOW - 120.04), ('proj.quick', 'id-2', NOW - 3)),
                        'reports@web1': reply(['reports', 'shared']), 'default@web2': busy(('proj.slow', 'id-3', NOW - 61)),
                        'stray@web9': busy(('proj.slow', 'id-4', NOW - 500))}, unexpected=['stray@web9'])
    health = fleet_health(FLEET, workers, queues=QUEUES, max_task_runtime=60, now=NOW)
    assert health['healthy'] is False
    assert [(t['node'], t['host'], t['name'], t['id'], t['runtime']) for t in health['tasks']] == [
        ('default@web1', 'web1', 'proj.slow', 'id-1', 120.0), ('default@web2', 'web2', 'proj.slow', 'id-3', 61.0),
        ('stray@web9', '-', 'proj.slow', 'id-4', 500.0)]
    assert health['problems'] == [
        'default@web1 (host web1): task proj.slow[id-1] running for 120.0 s, more than 60 s',
        'default@web2 (host web2): task proj.slow[id-3] running for 61.0 s, more than 60 s',
        'stray@web9 (host -): task proj.slow[id-4] running for 500.0 s, more than 60 s']
    assert 'task proj.slow[id-1] on default@web1: running for 120.0 s, more than 60 s' in health['table']
    # The node rows themselves stay as they were: answering and consuming.
    assert [row['ok'] for row in health['rows']] == [True, True, True, True]


@pytest.mark.parametrize('limit', [None, '', 600, '600'])
def test_no_max_task_runtime_or_none_over_it_is_healthy(limit):
    workers = answered({'default@web1': busy(('proj.slow', 'id-1', NOW - 120)), 'reports@web1': reply(['reports', 'shared']),
                        'default@web2': reply(['celery'])})
    health = fleet_health(FLEET, workers, queues=QUEUES, max_task_runtime=limit, now=NOW if limit else None)
    assert health['healthy'] is True and health['tasks'] == []


def test_tasks_without_a_wall_clock_start_are_not_judged():
    # Not started yet (None), junk, or Celery before 5.3's monotonic clock (seconds since boot).
    workers = answered({'default@web1': busy(('a', '1', None), ('b', '2', 'yesterday'), ('c', '3', 3600.5), ('d', '4', True)),
                        'reports@web1': reply(['reports', 'shared']), 'default@web2': reply(['celery'])})
    assert fleet_health(FLEET, workers, queues=QUEUES, max_task_runtime=1, now=NOW)['tasks'] == []


@pytest.mark.parametrize('arguments, message', [
    (dict(max_task_runtime=-5, now=NOW), 'fleet_health: max_task_runtime must be a number of seconds over 0, got -5'),
    (dict(max_task_runtime=0, now=NOW), 'fleet_health: max_task_runtime must be a number of seconds over 0, got 0'),
    (dict(max_task_runtime='soon', now=NOW), "fleet_health: max_task_runtime must be a number of seconds over 0, got 'soon'"),
    (dict(max_task_runtime='nan', now=NOW), "fleet_health: max_task_runtime must be a number of seconds over 0, got 'nan'"),
    (dict(max_task_runtime=[60], now=NOW), 'fleet_health: max_task_runtime must be a number of seconds over 0, got list'),
    (dict(max_task_runtime=60), 'fleet_health: now (epoch seconds) must be a number with max_task_runtime, got NoneType'),
])
def test_a_bad_max_task_runtime_is_named(arguments, message):
    with pytest.raises(AnsibleFilterError) as caught:
        fleet_health(FLEET, HEALTHY, **arguments)
    assert str(caught.value) == message


def test_an_active_task_not_shaped_as_celery_sends_it_is_named():
    workers = answered({'default@web1': {'active': ['junk']}})
    with pytest.raises(AnsibleFilterError) as caught:
        fleet_health(FLEET[:1], workers, max_task_runtime=1, now=NOW)
    assert str(caught.value) == "fleet_health: workers.workers['default@web1'].active[0] must be a dict, got str"


def test_broker_findings_are_reported_per_kind_and_judged_only_with_a_limit():
    summary = {'orphan_reply': 12, 'no_consumer': 0, 'overdue_unacked': 2}
    health = fleet_health(FLEET, HEALTHY, queues=QUEUES, findings=summary, max_findings={'orphan_reply': 0, 'overdue_unacked': '5'})
    assert [(row['kind'], row['count'], row['ok']) for row in health['findings']] == [
        ('no_consumer', 0, True), ('orphan_reply', 12, False), ('overdue_unacked', 2, True)]
    assert health['problems'] == ['broker orphan_reply: 12 found, more than 0'] and not health['healthy']
    # A line per kind found or over its limit; none for a kind with nothing found.
    assert 'broker orphan_reply: 12 found - 12 found, more than 0' in health['table']
    assert 'broker overdue_unacked: 2 found' in health['table']
    assert not any(line.startswith('broker no_consumer') for line in health['table'])
    # Reported without limits, never judged; without findings, no rows.
    assert fleet_health(FLEET, HEALTHY, queues=QUEUES, findings=summary)['healthy']
    assert fleet_health(FLEET, HEALTHY, queues=QUEUES)['findings'] == []


@pytest.mark.parametrize('findings, max_findings, message', [
    ({'orphan_reply': 1}, {'orphan_replies': 0}, 'max_findings names kinds celery_broker_info did not check on this broker: '
                                                 'orphan_replies (checked: orphan_reply)'),
    ({'orphan_reply': 1}, {'orphan_reply': 'none'}, "max_findings['orphan_reply'] must be a whole number of findings"),
    ({'orphan_reply': 'x'}, {}, "findings['orphan_reply'] must be a whole number of findings"),
    (['orphan_reply'], {}, 'findings (the summary of celery_broker_info) must be a dict'),
])
def test_bad_findings_and_limits_are_named(findings, max_findings, message):
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        fleet_health(FLEET, HEALTHY, queues=QUEUES, findings=findings, max_findings=max_findings)
