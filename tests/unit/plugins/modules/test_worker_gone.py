# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""celery_worker's confirmation loop with scripted replies: nodes that stop answering mid-way."""

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError
from ansible_collections.celeryops.fleet.plugins.module_utils._control import Replies
from ansible_collections.celeryops.fleet.plugins.module_utils import _workers


class ScriptedControl(object):
    """Answers each snapshot with the next entry of ``script``: node -> active tasks (absent: silent)."""

    def __init__(self, script):
        self.script = list(script)
        self.asked = []

    def request(self, commands, expectation=None, destination=None, timeout=1.0):
        self.asked.append(destination)
        answering = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        replies = Replies(commands)
        for node, active in answering.items():
            if destination and node not in destination:
                continue
            replies.add('ping', node, {'ok': 'pong'})
            replies.add('active_queues', node, [])
            replies.add('active', node, [{'id': 't%d' % i, 'name': 'sleep'} for i in range(active)])
            replies.add('reserved', node, [])
            replies.add('stats', node, {'pool': {'max-concurrency': 1}})
        return replies

    def reconnect(self):
        raise AssertionError('the broker never goes away here')


def params(state='drained', **overrides):
    out = dict(nodes=['a@h', 'b@h'], state=state, queues=None, concurrency=None, autoscale=None, events=None,
               exclusive=False, timeout=1.0, wait_timeout=5.0, wait_sleep=0.001)
    out.update(overrides)
    return out


def confirm(script, state='drained', plans=None):
    control = ScriptedControl(script)
    fleet = _workers.Fleet(control, params(state))
    plans = plans or {'a@h': [('cancel_consumer', {'queue': 'q'})], 'b@h': [('cancel_consumer', {'queue': 'q'})]}
    return fleet, control, _workers.confirm(fleet, params(state), ['a@h', 'b@h'], plans)


def test_node_killed_during_the_drain_is_gone_and_the_other_drains():
    # The consumers are gone on both; then a@h dies while b@h finishes its task.
    fleet, control, after = confirm([{'a@h': 1, 'b@h': 1}, {'b@h': 1}, {'b@h': 1}, {'b@h': 0}])
    assert fleet.gone == {'a@h'}
    assert after == {'b@h': after['b@h']} and after['b@h']['active'] == 0
    # Once gone, a node is asked no more.
    assert control.asked[-1] == ['b@h']


def test_one_missed_answer_is_not_death():
    fleet, _control, after = confirm([{'a@h': 1, 'b@h': 1}, {'b@h': 1}, {'a@h': 0, 'b@h': 0}])
    assert fleet.gone == set()
    assert sorted(after) == ['a@h', 'b@h']


def test_every_node_gone_ends_the_drain():
    fleet, control, after = confirm([{'a@h': 1, 'b@h': 1}, {}, {}])
    assert fleet.gone == {'a@h', 'b@h'}
    assert after == {}


def test_a_node_gone_before_consuming_is_confirmed_fails_at_once():
    plans = {'a@h': [('add_consumer', {'queue': 'q'})], 'b@h': []}
    with pytest.raises(BrokerError) as info:
        confirm([{'b@h': 0}], state='consuming', plans=plans)
    assert info.value.msg == 'a@h stopped answering before the change could be confirmed (killed or crashed?)'
    assert info.value.option == 'nodes'


def test_stopped_nodes_are_not_gone_but_done():
    plans = {'a@h': [('shutdown', {})], 'b@h': [('shutdown', {})]}
    fleet, _control, after = confirm([{}], state='stopped', plans=plans)
    assert fleet.gone == set() and after == {}


class FlakyControl(object):
    """A broker that goes away once, on the ``fail_on``-th command; the node's pool then holds
    ``pool_after`` processes (did the command in flight arrive or not)."""

    def __init__(self, fail_on, pool_after):
        self.fail_on, self.pool_after = fail_on, pool_after
        self.pool, self.commands, self.reconnects = 2, [], 0

    def _maybe_fail(self, command):
        self.commands.append(command)
        if len(self.commands) == self.fail_on:
            self.pool = self.pool_after
            raise BrokerError('lost the connection to redis', lost=True)

    def request(self, commands, expectation=None, destination=None, timeout=1.0):
        replies = Replies(commands)
        if 'ping' in commands:
            for command, value in (('ping', {'ok': 'pong'}), ('active_queues', []), ('active', []), ('reserved', []),
                                   ('stats', {'pool': {'max-concurrency': self.pool}})):
                replies.add(command, 'a@h', value)
            return replies
        command = list(commands)[0]
        self._maybe_fail(command)
        if command == 'pool_grow':
            self.pool += commands[command]['n']
        replies.add(command, 'a@h', {'ok': 'done'})
        return replies

    def send(self, command, arguments=None, destination=None):
        self._maybe_fail(command)

    def reconnect(self):
        self.reconnects += 1


@pytest.mark.parametrize('arrived, resent', [(True, []), (False, ['pool_grow'])])
def test_broker_lost_during_a_command_plans_again_from_the_state_after(arrived, resent):
    # pool_grow is not idempotent: sent again after it arrived, it would grow the pool twice.
    control = FlakyControl(fail_on=1, pool_after=4 if arrived else 2)
    options = params(None, nodes=['a@h'], concurrency=4)
    fleet = _workers.Fleet(control, options)
    unchanged = _workers.apply(fleet, options, ['a@h'], {'a@h': [('pool_grow', {'n': 2})]})
    assert control.reconnects == 1 and unchanged == set()
    assert control.commands == ['pool_grow'] + resent
    assert control.pool == 4


def test_broker_lost_during_shutdown_sends_it_again():
    control = FlakyControl(fail_on=1, pool_after=2)
    options = params('stopped', nodes=['a@h'])
    fleet = _workers.Fleet(control, options)
    _workers.apply(fleet, options, ['a@h'], {'a@h': [('shutdown', {})]})
    assert control.reconnects == 1 and control.commands == ['shutdown', 'shutdown']
