# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fleet_health's stalled consumers and prefetch starvation: plain dicts shaped as celery_worker_info (active,
reserved, active_queues, stats) and celery_queue_info return them."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.celeryops.fleet.plugins.filter.fleet import fleet_health


def node(queues, active=0, reserved=0, processes=2, stats=True):
    reply = {'online': True, 'queues': list(queues), 'active': [{'id': 'a%d' % i} for i in range(active)],
             'reserved': [{'id': 'r%d' % i} for i in range(reserved)]}
    if stats:
        reply['stats'] = {'pid': 1, 'pool': {'max-concurrency': processes, 'processes': list(range(processes))}}
    return reply


def answered(workers):
    return {'workers': workers, 'missing': [], 'duplicates': [], 'unexpected': []}


def queue(name, messages):
    return {'name': name, 'messages': messages, 'unacked': 0}


EXPECTED = [{'host': 'web1', 'node': 'a@web1', 'queues': ['celery']}, {'host': 'web2', 'node': 'b@web2', 'queues': ['celery']}]


def test_an_idle_node_listing_a_queue_with_ready_messages_is_stalled_by_node_and_queue():
    workers = answered({'a@web1': node(['celery', 'mail']), 'b@web2': node(['celery'], active=1)})
    health = fleet_health(EXPECTED, workers, queues=[queue('celery', 5), queue('mail', 0)])
    assert health['healthy'] is False
    assert [(row['kind'], row['node'], row['host'], row['queue']) for row in health['stalled']] == [
        ('stalled', 'a@web1', 'web1', 'celery')]
    assert health['problems'] == ['a@web1 (host web1): queue celery stalled: 5 ready messages, and a@web1 lists it in '
                                  'active_queues but is idle (nothing active or reserved)']
    assert 'stalled on a@web1: queue celery stalled: 5 ready messages, and a@web1 lists it in active_queues but is idle ' \
           '(nothing active or reserved)' in health['table']
    # The node rows are unchanged: both answer and consume what they should.
    assert [row['ok'] for row in health['rows']] == [True, True]


@pytest.mark.parametrize('reply, depth', [
    (node(['celery'], active=1), 5),          # working
    (node(['celery'], reserved=1), 5),        # a message prefetched, about to run
    (node(['celery']), 0),                    # idle, nothing waits
    (node(['mail']), 5),                      # does not list the queue (cancel_consumer): the node row says so
    ({'online': True, 'queues': ['celery'], 'active': []}, 5),  # reserved not asked for: not judged
])
def test_a_working_or_unjudgeable_node_is_not_stalled(reply, depth):
    health = fleet_health(EXPECTED[:1], answered({'a@web1': reply}), queues=[queue('celery', depth)])
    assert health['stalled'] == []


def test_a_stalled_node_of_another_host_or_unexpected_is_still_named():
    workers = answered({'a@web1': node(['celery'], active=1), 'b@web2': node(['celery'], active=2),
                        'stray@web9': node(['celery'])})
    workers['unexpected'] = ['stray@web9']
    health = fleet_health(EXPECTED, workers, queues=[queue('celery', 1)])
    assert [(row['node'], row['host']) for row in health['stalled']] == [('stray@web9', '-')]


def test_hostile_queue_and_node_names_are_shown_as_they_are():
    name = 'q "<&>\' \u00e9\n'
    workers = answered({'n\u00e9@h<1>': node([name])})
    health = fleet_health([], workers, queues=[queue(name, 2)])
    assert health['stalled'][0]['queue'] == name and health['stalled'][0]['node'] == 'n\u00e9@h<1>'
    assert health['problems'] == ['n\u00e9@h<1> (host -): queue %s stalled: 2 ready messages, and n\u00e9@h<1> lists it in '
                                  'active_queues but is idle (nothing active or reserved)' % name]


def window(start, end, depths_start, depths_end, seconds=10):
    return fleet_health(EXPECTED, answered(start), queues=[queue(n, m) for n, m in depths_start.items()],
                        workers_end=answered(end), queues_end=[queue(n, m) for n, m in depths_end.items()],
                        stall_window=seconds)


def test_with_a_window_a_stall_is_one_at_both_samples():
    idle = {'a@web1': node(['celery']), 'b@web2': node(['celery'], active=1)}
    health = window(idle, idle, {'celery': 4}, {'celery': 6})
    assert [row['status'] for row in health['stalled']] == [
        'queue celery stalled: 4 ready messages at the start of a 10 s window and 6 at its end, and a@web1 lists it in '
        'active_queues but is idle (nothing active or reserved)']


@pytest.mark.parametrize('end, depths_end', [
    ({'a@web1': node(['celery'], active=1)}, {'celery': 3}),  # took a task meanwhile: between two tasks at the start
    ({'a@web1': node(['celery'])}, {'celery': 0}),             # the queue emptied
    ({'a@web1': node([])}, {'celery': 4}),                     # no longer lists it (cancelled): not a stall
    ({}, {'celery': 4}),                                       # gone: the node rows say so
])
def test_with_a_window_what_does_not_hold_at_its_end_is_not_a_stall(end, depths_end):
    health = window({'a@web1': node(['celery'])}, end, {'celery': 4}, depths_end)
    assert health['stalled'] == []


def test_tasks_reserved_while_the_own_pool_has_idle_processes_are_prefetch_starvation():
    workers = answered({'a@web1': node(['celery'], active=1, reserved=3, processes=4), 'b@web2': node(['celery'], active=2, processes=2)})
    health = fleet_health(EXPECTED, workers, queues=[queue('celery', 0)])
    assert [(row['kind'], row['node'], row['queue'], row['status']) for row in health['stalled']] == [
        ('prefetch_starvation', 'a@web1', 'celery', 'prefetch starvation: 3 task(s) reserved while only 1 of its 4 processes are busy')]
    assert health['healthy'] is False


def test_tasks_reserved_behind_a_busy_pool_while_another_consumer_idles_are_prefetch_starvation():
    workers = answered({'a@web1': node(['celery'], active=1, reserved=3, processes=1), 'b@web2': node(['celery'], processes=1)})
    health = fleet_health(EXPECTED, workers, queues=[queue('celery', 0)])
    assert [row['status'] for row in health['stalled']] == [
        'prefetch starvation: 3 task(s) reserved behind its 1 busy process(es) while b@web2, consuming the same queue, has '
        'idle processes']


@pytest.mark.parametrize('workers', [
    {'a@web1': node(['celery'], active=2, reserved=3), 'b@web2': node(['celery'], active=2)},  # everyone busy
    {'a@web1': node(['celery'], active=2, reserved=3), 'b@web2': node(['mail'])},  # the idle one consumes another queue
    {'a@web1': node(['celery'], active=2, reserved=3), 'b@web2': node(['celery'], reserved=1)},  # b about to run one
    {'a@web1': node(['celery'], active=1, reserved=3, stats=False), 'b@web2': node(['celery'], active=2)},  # no stats
    {'a@web1': node(['celery'], active=2, reserved=0), 'b@web2': node(['celery'])},  # nothing reserved
    {'a@web1': node(['celery'], active=0, reserved=2), 'b@web2': node(['celery'], active=2)},  # received, about to start
])
def test_no_starvation_without_reserved_tasks_waiting_for_an_idle_process(workers):
    assert fleet_health(EXPECTED, answered(workers), queues=[queue('celery', 0)])['stalled'] == []


def test_with_a_window_starvation_is_one_at_both_samples():
    starved = {'a@web1': node(['celery'], active=1, reserved=3, processes=1), 'b@web2': node(['celery'], processes=1)}
    health = window(starved, starved, {'celery': 0}, {'celery': 0}, seconds='5')
    assert health['stalled'][0]['status'].endswith('has idle processes (at both ends of a 5 s window)')
    resolved = dict(starved, **{'b@web2': node(['celery'], active=1, processes=1)})
    assert window(starved, resolved, {'celery': 0}, {'celery': 0})['stalled'] == []


@pytest.mark.parametrize('arguments, message', [
    (dict(workers_end=[]), 'fleet_health: workers_end (celery_worker_info at the end of the window) must be a dict, got list'),
    (dict(workers_end=answered({}), queues_end={'celery': 1}), 'fleet_health: queues_end must be a list, got dict'),
    (dict(workers_end=answered({}), queues_end=[{'name': 'celery'}]), 'fleet_health: queues_end[0].messages must be a number, got NoneType'),
    (dict(workers_end=answered({}), stall_window='soon'), "fleet_health: stall_window must be a number of seconds over 0, got 'soon'"),
    (dict(workers=answered({'a@web1': dict(node(['celery']), reserved='x')})),
     "fleet_health: workers.workers['a@web1'].reserved must be a list, got str"),
])
def test_malformed_input_for_the_stall_check_is_named(arguments, message):
    arguments = dict(dict(expected=EXPECTED, workers=answered({}), queues=[queue('celery', 1)]), **arguments)
    with pytest.raises(AnsibleFilterError) as caught:
        fleet_health(**arguments)
    assert str(caught.value) == message
