# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_workers: one node state from the control replies, and celery_worker's converge with a scripted fleet
(pure logic; the real workers are in tests/integration/test_worker.py)."""

import pytest

from ansible_collections.celeryops.fleet.plugins.inventory.celery_workers import node_facts
from ansible_collections.celeryops.fleet.plugins.module_utils import _workers
from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError
from ansible_collections.celeryops.fleet.plugins.module_utils._control import Replies

STATS = {'pid': 42, 'pool': {'max-concurrency': 4, 'processes': [43, 44]}, 'prefetch_count': 8}


def replies_of(node, **sections):
    replies = Replies(['ping'] + list(sections))
    replies.add('ping', node, {'ok': 'pong'})
    for command, value in sections.items():
        replies.add(command, node, value)
    return replies


def test_node_state_reads_every_section():
    replies = replies_of('w1@h', stats=dict(STATS, autoscaler={'max': 6, 'min': 2}),
                         active_queues=[{'name': 'b'}, {'name': 'a', 'routing_key': 'a'}],
                         active=[{'id': 't1', 'name': 'add', 'args': [1]}], reserved=[{'id': 't2', 'name': 'mul'}])
    assert _workers.node_state(replies, 'w1@h') == dict(
        node='w1@h', queues=['a', 'b'], concurrency=2, max_concurrency=4, autoscale=[6, 2], pid=42, processes=[43, 44],
        pool=None, active=1, reserved=1, tasks=[dict(id='t1', name='add', state='active'), dict(id='t2', name='mul', state='reserved')])


def test_node_state_of_sections_not_asked_not_answered_or_of_another_shape():
    empty = dict(node='w1@h', queues=[], concurrency=None, max_concurrency=None, autoscale=None, pid=None, processes=None,
                 pool=None, active=0, reserved=0, tasks=[])
    assert _workers.node_state(replies_of('w1@h'), 'w1@h') == empty
    assert _workers.node_state(replies_of('w1@h', stats=STATS), 'other@h') == dict(empty, node='other@h')
    junk = replies_of('w1@h', stats={'pool': 'N/A', 'autoscaler': 'x'}, active_queues=['junk', {'exchange': 'x'}, {'name': ''}],
                      active='busy', reserved=[5, {'id': 't'}])
    assert _workers.node_state(junk, 'w1@h') == dict(empty, reserved=1,
                                                     tasks=[dict(id='t', name=None, state='reserved')])
    # Without processes (threads, solo), the pool size is the one the pool reports.
    assert _workers.node_state(replies_of('w1@h', stats={'pool': {'max-concurrency': 3}}), 'w1@h')['concurrency'] == 3


def test_one_state_for_the_module_and_the_inventory():
    state = _workers.node_state(replies_of('w1@h', stats=STATS, active_queues=[{'name': 'q'}], active=[], reserved=[]),
                                'w1@h')
    # celery_worker returns the pool's processes now; the inventory the size the pool reports.
    assert _workers.public_state(state) == dict(queues=['q'], active=0, reserved=0, concurrency=2, autoscale=None)
    assert node_facts(state) == dict(name='w1@h', queues=['q'], concurrency=4, pid=42)


@pytest.mark.parametrize('state, extras, needed', [
    ('drained', {}, None),
    ('stopped', {}, None),
    ('consuming', {}, 'state consuming'),
    (None, {'concurrency': 2}, 'state change'),
    ('drained', {'concurrency': 2}, 'state drained with concurrency'),
    ('drained', {'autoscale': [4, 2], 'events': True}, 'state drained with autoscale and events'),
])
def test_what_needs_a_node_that_answers(state, extras, needed):
    assert _workers.needs_answer(params(state, **extras)) == needed


class Fleet(object):
    """Workers as a Control sees them: node -> consumed queues (a node not in it does not answer); records the
    commands sent."""

    def __init__(self, nodes):
        self.queues = dict((node, set(queues)) for node, queues in nodes.items())
        self.sent = []

    def request(self, commands, expectation=None, destination=None, timeout=1.0):
        replies = Replies(commands)
        for node, queues in self.queues.items():
            if destination and node not in destination:
                continue
            for command, arguments in commands.items():
                if command == 'cancel_consumer':
                    self.sent.append((node, command, arguments['queue']))
                    queues.discard(arguments['queue'])
                    value = {'ok': 'no longer consuming from %s' % arguments['queue']}
                else:
                    value = dict(ping={'ok': 'pong'}, active_queues=[{'name': q} for q in queues], active=[],
                                 reserved=[], stats={'pool': {'max-concurrency': 1}})[command]
                replies.add(command, node, value)
        return replies

    def reconnect(self):
        raise AssertionError('the broker never goes away here')


def params(state='drained', **overrides):
    out = dict(nodes=['live@h', 'absent@h'], state=state, queues=None, concurrency=None, autoscale=None, events=None,
               rate_limits=None, time_limits=None, exclusive=False, timeout=0.05, wait_timeout=5.0, wait_sleep=0.001)
    out.update(overrides)
    return out


def converge(fleet, options, check_mode=False):
    result = dict(changed=False, nodes={}, missing=[], gone=[])
    _workers.converge(fleet, options, check_mode, result)
    return result


@pytest.mark.parametrize('check_mode', [True, False])
def test_a_drain_of_a_node_that_does_not_answer_drains_the_others_and_names_it(check_mode):
    fleet = Fleet({'live@h': ['q1', 'q2'], 'bystander@h': ['q1']})
    result = converge(fleet, params(), check_mode)
    assert result['changed'] is True and result['missing'] == ['absent@h'] and result['gone'] == []
    assert sorted(result['nodes']) == ['live@h']
    assert result['nodes']['live@h']['actions'] == ['cancel_consumer q1', 'cancel_consumer q2']
    if check_mode:
        assert fleet.sent == [] and result['nodes']['live@h']['after']['queues'] == ['q1', 'q2']
    else:
        assert fleet.sent == [('live@h', 'cancel_consumer', 'q1'), ('live@h', 'cancel_consumer', 'q2')]
        assert result['nodes']['live@h']['after']['queues'] == []
    assert fleet.queues['bystander@h'] == {'q1'}


@pytest.mark.parametrize('check_mode', [True, False])
def test_a_drain_of_nodes_drained_or_not_answering_changes_nothing(check_mode):
    fleet = Fleet({'live@h': []})
    result = converge(fleet, params(nodes=['live@h', 'absent@h', 'gone@*']), check_mode)
    assert result['changed'] is False and result['missing'] == ['absent@h', 'gone@*'] and fleet.sent == []
    assert result['nodes']['live@h']['actions'] == []
    nobody = converge(Fleet({}), params(), check_mode)
    assert nobody['changed'] is False and nobody['missing'] == ['absent@h', 'live@h'] and nobody['nodes'] == {}


@pytest.mark.parametrize('state, extras, needed', [
    ('consuming', {'queues': ['q1']}, 'state consuming'),
    ('drained', {'concurrency': 2}, 'state drained with concurrency'),
])
def test_what_only_an_answering_node_can_do_fails_naming_the_silent_ones(state, extras, needed):
    fleet = Fleet({'live@h': ['q1']})
    with pytest.raises(BrokerError) as info:
        converge(fleet, params(state, **extras))
    assert info.value.msg == 'nodes not online (%s needs them answering): absent@h' % needed
    assert info.value.option == 'nodes' and fleet.sent == []


# -- task limits --------------------------------------------------------------------------------

def test_registered_entries_as_celery_writes_them():
    tasks = _workers.parse_registered([
        'proj.add [rate_limit=10/m time_limit=10 soft_time_limit=5.0]',
        'proj.mul',
        'proj.div [soft_time_limit=3.0]',
    ])
    assert tasks == {
        'proj.add': dict(rate_limit='10/m', time_limit=10.0, soft_time_limit=5.0),
        'proj.mul': dict(rate_limit=None, time_limit=None, soft_time_limit=None),
        'proj.div': dict(rate_limit=None, time_limit=None, soft_time_limit=3.0),
    }


def test_registered_entries_of_hostile_task_names_and_values():
    tasks = _workers.parse_registered([
        'odd name [rate_limit=1/s]',                       # spaces in the name
        'br [acket] [time_limit=7]',                       # brackets in the name, then the items
        'tricky [rate_limit=1] [rate_limit=2/m]',          # a name that looks like items, then the real items
        'plain [x]',                                       # brackets that are no items: all name
        'no [rate_limit=1/s',                              # not closed: all name
        'dup [rate_limit=1 rate_limit=2]',                 # an item twice is not Celery's: all name
        'junk [time_limit=soon soft_time_limit=inf]',      # values that are no number stay text
        'empty []', '', 5, None, ['nested'],
    ])
    assert tasks['odd name'] == dict(rate_limit='1/s', time_limit=None, soft_time_limit=None)
    assert tasks['br [acket]']['time_limit'] == 7.0
    assert tasks['tricky [rate_limit=1]']['rate_limit'] == '2/m'
    assert tasks['plain [x]'] == tasks['no [rate_limit=1/s'] == tasks['empty []'] == dict(
        rate_limit=None, time_limit=None, soft_time_limit=None)
    assert tasks['dup [rate_limit=1 rate_limit=2]']['rate_limit'] is None
    assert tasks['junk'] == dict(rate_limit=None, time_limit='soon', soft_time_limit='inf')
    assert len(tasks) == 8   # what is no string, or empty, is skipped
    assert _workers.parse_registered('not a list') == {} and _workers.parse_registered(None) == {}


@pytest.mark.parametrize('value, per_second', [
    (None, None), ('10', 10.0), (10, 10.0), ('10/s', 10.0), ('60/m', 1.0), ('0.5/s', 0.5), ('3600/h', 1.0),
])
def test_rates_as_celery_reads_them(value, per_second):
    assert _workers.rate_per_second(value) == per_second


@pytest.mark.parametrize('value, message', [
    ('10/x', "rate_limits: proj.add: '10/x' is not a rate like 10/s, 10/m or 10/h (null for no limit)"),
    ('-1/m', "rate_limits: proj.add: '-1/m' is not a rate"),
    ('0/m', "rate_limits: proj.add: '0/m' allows no task at all; null means no limit"),
    (' 10/m', "is not a rate"), ('10/m; rm', "is not a rate"), (True, "True is not a rate"), ([10], "is not a rate"),
    ({}, 'is not a rate'), (1.5, 'is not a rate'),
])
def test_bad_rates_are_refused_naming_the_option(value, message):
    with pytest.raises(BrokerError) as info:
        _workers.check_rate_limits({'proj.add': value})
    assert message in info.value.msg and info.value.option == 'rate_limits'


def test_rates_kept_as_text_and_bad_task_names_refused():
    assert _workers.check_rate_limits({'a': 10, 'b': None, 'c': '5/m'}) == {'a': '10', 'b': None, 'c': '5/m'}
    assert _workers.check_rate_limits(None) is None
    for bad in ({'': '1/s'}, {' a': '1/s'}, ['a'], 'a=1/s'):
        with pytest.raises(BrokerError) as info:
            _workers.check_rate_limits(bad)
        assert info.value.option == 'rate_limits'


def test_time_limits_read():
    assert _workers.check_time_limits({'a': {'soft': 5, 'hard': 10}, 'b': None, 'c': {'hard': '2.5'}, 'd': {'soft': None}}) == {
        'a': dict(soft=5.0, hard=10.0), 'b': dict(soft=None, hard=None), 'c': dict(soft=None, hard=2.5),
        'd': dict(soft=None, hard=None)}


@pytest.mark.parametrize('value, message', [
    ({'soft': -1}, "time_limits: proj.add: soft must be more than 0 seconds (null for no limit), got -1"),
    ({'hard': 0}, "hard must be more than 0 seconds"),
    ({'hard': 'nan'}, "hard must be more than 0 seconds"),
    ({'hard': 'inf'}, "hard must be more than 0 seconds"),
    ({'hard': 'ten'}, "hard must be a number of seconds or null, got 'ten'"),
    ({'hard': True}, "hard must be a number of seconds or null, got True"),
    ({'soft': 20, 'hard': 10}, "soft (20) is more than hard (10)"),
    ({'sfot': 5}, "must be {soft: seconds, hard: seconds}"),
    (10, "must be {soft: seconds, hard: seconds}"),
])
def test_bad_time_limits_are_refused_naming_the_option(value, message):
    with pytest.raises(BrokerError) as info:
        _workers.check_time_limits({'proj.add': value})
    assert message in info.value.msg and info.value.option == 'time_limits'


@pytest.mark.parametrize('wanted, current, same', [
    ('1/s', '60/m', True), ('10/m', '10/m', True), (None, None, True), ('10/m', None, False), (None, '10/m', False),
    ('10/m', '11/m', False), ('10/m', 'garbage', False), (None, 'garbage', False),
])
def test_rates_compared_per_second(wanted, current, same):
    assert _workers.same_rate(wanted, current) is same


class LimitFleet(object):
    """One worker's task limits as a Control sees them; rate_limit / time_limit change them, like Celery's."""

    def __init__(self, tasks, pool_restarts=False, processes=(10, 11)):
        self.tasks = tasks   # name -> dict(rate_limit=..., time_limit=..., soft_time_limit=...)
        self.pool_restarts = pool_restarts
        self.processes = list(processes)
        self.sent = []

    def _registered(self):
        out = []
        for name in sorted(self.tasks):
            items = ['%s=%s' % (k, self.tasks[name][k]) for k in _workers.LIMIT_ITEMS if self.tasks[name].get(k) is not None]
            out.append('%s [%s]' % (name, ' '.join(items)) if items else name)
        return out

    def request(self, commands, expectation=None, destination=None, timeout=1.0):
        replies = Replies(commands)
        for command, arguments in commands.items():
            if command == 'rate_limit':
                self.sent.append((command, arguments))
                self.tasks[arguments['task_name']]['rate_limit'] = arguments['rate_limit']
                value = {'ok': 'new rate limit set successfully'}
            elif command == 'time_limit':
                self.sent.append((command, arguments))
                self.tasks[arguments['task_name']].update(time_limit=arguments['hard'], soft_time_limit=arguments['soft'])
                value = {'ok': 'time limits set successfully'}
            elif command == 'pool_restart':
                self.sent.append((command, arguments))
                self.processes = [self.processes[0] + 100] + self.processes[1:]  # one at once, as Celery
                value = {'ok': 'reload started'}
            else:
                assert command != 'registered' or arguments == {'taskinfoitems': _workers.LIMIT_ITEMS}
                value = dict(ping={'ok': 'pong'}, active_queues=[], active=[], reserved=[],
                             stats={'pool': {'max-concurrency': 2, 'processes': self.processes}},
                             registered=self._registered(),
                             conf={'worker_pool_restarts': True} if self.pool_restarts else {})[command]
            replies.add(command, 'live@h', value)
        return replies


def limit_params(state=None, **overrides):
    return params(state, nodes=['live@h'], **overrides)


@pytest.mark.parametrize('check_mode', [True, False])
def test_limits_set_where_they_differ_and_confirmed(check_mode):
    fleet = LimitFleet({'proj.add': dict(rate_limit='60/m'), 'proj.mul': dict(time_limit=10.0),
                        'proj.div': dict(soft_time_limit=5.0, time_limit=10.0)})
    options = limit_params(rate_limits={'proj.add': '1/s', 'proj.mul': '5/m'},
                           time_limits={'proj.mul': dict(soft=None, hard=20.0), 'proj.div': dict(soft=5.0, hard=10.0)})
    result = converge(fleet, options, check_mode)
    node = result['nodes']['live@h']
    assert result['changed'] is True
    assert node['actions'] == ['rate_limit proj.mul 5/m', 'time_limit proj.mul none 20.0']
    assert node['before']['rate_limits'] == {'proj.add': '60/m', 'proj.mul': None}
    assert node['before']['time_limits'] == {'proj.mul': dict(soft=None, hard=10.0), 'proj.div': dict(soft=5.0, hard=10.0)}
    if check_mode:
        assert fleet.sent == [] and node['after'] == node['before']
    else:
        assert [c for c, _a in fleet.sent] == ['rate_limit', 'time_limit']
        assert node['after']['rate_limits'] == {'proj.add': '60/m', 'proj.mul': '5/m'}
        assert node['after']['time_limits']['proj.mul'] == dict(soft=None, hard=20.0)
        again = converge(fleet, options)
        assert again['changed'] is False and again['nodes']['live@h']['actions'] == []


def test_limits_of_a_task_the_node_does_not_register_fail_before_anything_is_sent():
    fleet = LimitFleet({'proj.add': {}})
    for option in ('rate_limits', 'time_limits'):
        with pytest.raises(BrokerError) as info:
            converge(fleet, limit_params(**{option: {'proj.add': None, 'proj.nope': None}}))
        assert info.value.msg == '%s: proj.nope not registered on live@h, so its limits cannot be set (the node ' \
                                 'registers: proj.add)' % option
        assert info.value.option == option
    assert fleet.sent == []


def test_pool_restart_only_where_allowed_and_confirmed_by_new_processes():
    refused = LimitFleet({}, pool_restarts=False)
    with pytest.raises(BrokerError) as info:
        converge(refused, limit_params(state='restarted_pool'))
    assert 'live@h does not allow pool restarts' in info.value.msg and 'worker_pool_restarts is not set' in info.value.msg
    threads = LimitFleet({}, pool_restarts=True, processes=())
    with pytest.raises(BrokerError) as info:
        converge(threads, limit_params(state='restarted_pool'))
    assert 'runs a pool without processes' in info.value.msg
    assert refused.sent == threads.sent == []

    fleet = LimitFleet({}, pool_restarts=True)
    check = converge(fleet, limit_params(state='restarted_pool'), check_mode=True)
    assert check['changed'] and check['nodes']['live@h']['actions'] == ['pool_restart'] and fleet.sent == []
    result = converge(fleet, limit_params(state='restarted_pool'))
    assert result['nodes']['live@h']['before']['pool_processes'] == [10, 11]
    assert result['nodes']['live@h']['after']['pool_processes'] == [11, 110]
    assert fleet.sent == [('pool_restart', {})]


def test_a_pool_restart_shows_when_a_process_of_before_is_gone():
    assert _workers.restart_shows(dict(processes=[1, 2]), dict(processes=[2, 3]))
    assert not _workers.restart_shows(dict(processes=[1, 2]), dict(processes=[1, 2]))
    assert not _workers.restart_shows(dict(processes=[1, 2]), dict(processes=[]))
    assert not _workers.restart_shows(dict(processes=[1, 2]), dict(processes=None))
    assert _workers.restart_shows(dict(processes=[1, 2]), dict(processes=[3, 4]))


def test_a_node_that_does_not_answer_registered_is_not_taken_for_one_without_the_task():
    class Silent(LimitFleet):
        def request(self, commands, expectation=None, destination=None, timeout=1.0):
            replies = LimitFleet.request(self, dict((c, a) for c, a in commands.items() if c != 'registered'))
            replies.by_command.setdefault('registered', {})
            return replies
    fleet = Silent({'proj.add': {}})
    with pytest.raises(BrokerError) as info:
        converge(fleet, limit_params(rate_limits={'proj.add': '1/s'}))
    assert info.value.msg == 'rate_limits: live@h answered ping but not inspect registered within 0.05s, so its limits ' \
                             'are unknown'
    assert info.value.option == 'timeout' and fleet.sent == []
    assert not _workers.limits_applied(dict(rate_limits={'proj.add': None}), dict(registered=None, rate_limits={}))
