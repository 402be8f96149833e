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
        node='w1@h', queues=['a', 'b'], concurrency=2, max_concurrency=4, autoscale=[6, 2], pid=42, active=1, reserved=1,
        tasks=[dict(id='t1', name='add', state='active'), dict(id='t2', name='mul', state='reserved')])


def test_node_state_of_sections_not_asked_not_answered_or_of_another_shape():
    empty = dict(node='w1@h', queues=[], concurrency=None, max_concurrency=None, autoscale=None, pid=None, active=0,
                 reserved=0, tasks=[])
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
               exclusive=False, timeout=0.05, wait_timeout=5.0, wait_sleep=0.001)
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
