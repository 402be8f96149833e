#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: celery_worker
short_description: Make running Celery workers consume queues, drain them before a deploy, or stop them
version_added: 0.1.0
description:
  - Sets the desired state of running Celery workers through Celery's remote control, with only the broker URL.
  - V(consuming) makes the nodes consume O(queues) (C(add_consumer) for what is missing; with O(exclusive=true)
    also C(cancel_consumer) for the rest).
  - V(drained) cancels the consumers of O(queues) (default every queue the node consumes), confirms through
    C(active_queues) that they are gone (the control reply alone proves nothing), then waits until the node has no
    active and no reserved (prefetched) task. Prefetched tasks still run after a cancel; the module waits for them
    and, if O(wait_timeout) runs out, fails listing what each node still holds. A node that stops answering during
    the drain (killed, crashed) runs nothing any more, so it is reported in RV(gone), with a warning, and not waited for;
    the other nodes' drain still completes. With V(consuming), such a node fails the module at once.
  - V(stopped) sends a warm shutdown and waits until the nodes stop answering. Nodes already gone are not a change.
  - Every change is confirmed by asking the workers again; a second run with the same options changes nothing.
  - In check mode the module asks the workers for their state and reports what it would do, without sending any
    control command.
options:
  nodes:
    description:
      - Node names (like V(worker1@web1)) or glob patterns of the workers to act on.
      - When omitted (or V([*])), every node that answers, and RV(all_nodes) says so.
      - An empty list (as an empty variable gives) or V(null) is an error, not every node; the module fails naming
        O(nodes) before anything is sent.
      - A named node that does not answer is an error for V(consuming) and V(drained); for V(stopped) it is already
        where it should be.
    type: list
    elements: str
    default: ['*']
  state:
    description:
      - The state the nodes should be in. Optional when only O(concurrency), O(autoscale) or O(events) change.
    type: str
    choices: [consuming, drained, stopped]
  concurrency:
    description:
      - Pool size the nodes should have; grown or shrunk (C(pool_grow), C(pool_shrink)) only when the pool size in
        C(stats) differs. The prefork pool can change size; the threads and solo pools cannot, and the module fails
        with the worker's answer.
    type: int
  autoscale:
    description:
      - V([max, min]) for nodes started with C(--autoscale); sent only when C(stats) shows another range.
    type: list
    elements: int
  events:
    description:
      - Whether the nodes send task events (C(enable_events), C(disable_events)).
      - Workers do not report this setting, so check mode always predicts a change; a real run reports a change only
        when the worker's reply says it had one.
    type: bool
  queues:
    description:
      - With V(consuming), the queues to consume (required). With V(drained), the queues to stop consuming (default
        every queue).
      - An empty list (as an empty variable gives) is an error, not every queue.
    type: list
    elements: str
  exclusive:
    description:
      - With V(consuming), also stop consuming the queues not in O(queues).
    type: bool
    default: false
  timeout:
    description:
      - Seconds to collect the workers' replies to each question, in all.
      - On RabbitMQ, a memory or disk alarm blocks the connection that publishes the question; the module then fails
        when this time is out, saying that the broker blocked the connection, instead of reporting the workers
        missing.
    type: float
    default: 2.0
  wait_timeout:
    description:
      - Seconds to wait for the change to show (consumers gone, tasks finished, nodes silent).
      - If the broker goes away meanwhile (a restart, a lost connection, or silence for O(connect_timeout)), the
        module reconnects every O(wait_sleep) seconds within the same O(wait_timeout), and fails saying that the
        broker went away if it is not back in time.
      - If the broker goes away while the commands are being sent, the module waits, within O(wait_timeout), for
        the broker and the nodes to answer again, and plans what is left from their state then, so that no
        command is applied twice.
    type: float
    default: 300.0
  wait_sleep:
    description:
      - Seconds between two checks while waiting.
    type: float
    default: 0.5
extends_documentation_fragment:
  - celeryops.fleet.broker
  - celeryops.fleet.redis_transport
  - celeryops.fleet.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
requirements:
  - redis (for a Redis broker) or pika (for RabbitMQ) where the module runs; not celery or kombu
author:
  - celeryops.fleet developers (@celeryops)
"""

EXAMPLES = r"""
- name: Drain this host's workers before the deploy (prefetched tasks finish first)
  celeryops.fleet.celery_worker:
    broker_url: "{{ broker_url }}"
    nodes: ["*@{{ inventory_hostname }}"]
    state: drained
    wait_timeout: 600
  delegate_to: localhost

- name: Stop them (warm shutdown), confirmed when they stop answering
  celeryops.fleet.celery_worker:
    broker_url: "{{ broker_url }}"
    nodes: ["*@{{ inventory_hostname }}"]
    state: stopped
  delegate_to: localhost

- name: Make the reports workers consume only these queues
  celeryops.fleet.celery_worker:
    broker_url: "{{ broker_url }}"
    nodes: [reports@web2]
    state: consuming
    queues: [reports, reports_slow]
    exclusive: true
"""

RETURN = r"""
nodes:
  description: Per node acted on, its state before and after and the control commands sent.
  returned: always
  type: dict
  sample:
    default@web1:
      before: {queues: [default, mail], active: 2, reserved: 3, concurrency: 2, autoscale: null}
      after: {queues: [], active: 0, reserved: 0, concurrency: 2, autoscale: null}
      actions: ["cancel_consumer default", "cancel_consumer mail"]
all_nodes:
  description:
    - Whether O(nodes) was omitted (or V([*])), so that every node that answered was acted on (each is in
      RV(nodes), in check mode too, with what would be sent to it).
  returned: always
  type: bool
missing:
  description: Named nodes that did not answer.
  returned: always
  type: list
  elements: str
gone:
  description:
    - Nodes that answered at first but stopped answering (two questions in a row) while the module waited for them,
      as a worker killed or crashed during a drain does. With V(drained) they are not waited for and a warning names
      them; their C(after) is V(null). For 30 seconds after the broker went away and came back, silent nodes are not
      counted as gone, as workers reconnect on their own schedule.
  returned: always
  type: list
  elements: str
broker:
  description: The broker, without credentials.
  returned: always
  type: dict
elapsed:
  description: Seconds the module took.
  returned: success
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (
    BrokerError, broker_argument_spec, broker_from_params, check_seconds, fail_from_error)
from ansible_collections.celeryops.fleet.plugins.module_utils._control import (
    Control, Expectation, check_node_names)
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import (
    missing_library, redis_layout, redis_transport_argument_spec)
from ansible_collections.celeryops.fleet.plugins.module_utils._wait import wait_until

SNAPSHOT = {'ping': {}, 'active_queues': {}, 'active': {}, 'reserved': {}, 'stats': {}}
# Snapshots in a row a node must miss, while waited for, to count as gone (killed, crashed):
# one late answer from a busy node is not death.
GONE_AFTER = 2
# After the broker went away and came back, seconds during which silent nodes are not counted
# as gone: workers reconnect on their own schedule (kombu retries up to 30 s apart).
RECONNECT_GRACE = 30.0
# What an omitted nodes means: every node that answers.
ALL_NODES = ['*']


def check_params(params):
    # An empty list (from an empty variable) must never widen to every node. (A null is refused
    # by Ansible itself: with a default, nodes must be a list.)
    if not params['nodes']:
        raise BrokerError('nodes: the list is empty, so there is no node to act on (omit nodes to act on every node '
                          'that answers)', option='nodes')
    check_node_names(params['nodes'], 'nodes')
    if params['queues'] == []:
        # Nor to every queue (state: drained).
        raise BrokerError('queues: the list is empty, so there is no queue to act on (omit queues to drain every '
                          'queue)', option='queues')
    for queue in params['queues'] or []:
        if not queue or not queue.strip():
            raise BrokerError('queues: a queue name is empty', option='queues')
    if params['state'] == 'consuming' and not params['queues']:
        raise BrokerError('queues is required with state: consuming', option='queues')
    if not params['state'] and params['concurrency'] is None and params['autoscale'] is None \
            and params['events'] is None:
        raise BrokerError('nothing to do: give state, concurrency, autoscale or events', option='state')
    if params['state'] == 'stopped' and (params['concurrency'] is not None or params['autoscale'] is not None
                                         or params['events'] is not None):
        raise BrokerError('state: stopped goes with neither concurrency, autoscale nor events', option='state')
    if params['concurrency'] is not None and params['concurrency'] < 1:
        raise BrokerError('concurrency must be 1 or more, got %d' % params['concurrency'], option='concurrency')
    if params['autoscale'] is not None:
        if len(params['autoscale']) != 2 or min(params['autoscale']) < 0:
            raise BrokerError('autoscale must be [max, min], two numbers of 0 or more, got %s' % params['autoscale'],
                              option='autoscale')
        if params['autoscale'][0] < params['autoscale'][1] or params['autoscale'][0] < 1:
            raise BrokerError('autoscale: max (%d) must be at least min (%d) and at least 1'
                              % tuple(params['autoscale']), option='autoscale')
        if params['concurrency'] is not None:
            raise BrokerError('concurrency and autoscale exclude each other', option='autoscale')
    if params['exclusive'] and params['state'] != 'consuming':
        raise BrokerError('exclusive only goes with state: consuming', option='exclusive')
    for option in ('timeout', 'wait_timeout', 'wait_sleep'):
        check_seconds(params[option], option)


class Fleet(object):
    """The targeted nodes, asked about and told through one Control."""

    def __init__(self, control, params):
        self.control = control
        self.params = params
        self.all_nodes = params['nodes'] == ALL_NODES
        self.expectation = Expectation(None if self.all_nodes else params['nodes'])
        self.gone = set()   # nodes that stopped answering while waited for

    def snapshot(self, nodes=None):
        """node -> {queues, active, reserved} for the targeted nodes that answer."""
        expectation = Expectation(sorted(nodes)) if nodes is not None else self.expectation
        replies = self.control.request(SNAPSHOT, expectation, destination=sorted(nodes) if nodes else None,
                                       timeout=self.params['timeout'])
        state = {}
        for node in replies.nodes('ping'):
            if not self.all_nodes and not self.expectation.expects(node):
                continue
            queues = replies.first('active_queues').get(node) or []
            stats = replies.first('stats').get(node) or {}
            pool = stats.get('pool') or {}
            autoscaler = stats.get('autoscaler')
            state[node] = dict(node=node, queues=sorted(q.get('name') for q in queues if isinstance(q, dict)),
                               concurrency=len(pool['processes']) if isinstance(pool.get('processes'), list)
                               else pool.get('max-concurrency'),
                               autoscale=[autoscaler.get('max'), autoscaler.get('min')]
                               if isinstance(autoscaler, dict) else None,
                               active=len(replies.first('active').get(node) or []),
                               reserved=len(replies.first('reserved').get(node) or []),
                               tasks=[dict(id=t.get('id'), name=t.get('name'), state=kind)
                                      for kind in ('active', 'reserved')
                                      for t in replies.first(kind).get(node) or [] if isinstance(t, dict)])
        return state

    def tell(self, node, command, arguments):
        """One control command to one node; its reply is only an acknowledgement."""
        replies = self.control.request({command: arguments}, Expectation([node]), destination=[node],
                                       timeout=self.params['timeout'])
        reply = replies.first(command).get(node)
        if node not in replies.nodes(command):
            raise BrokerError('%s on %s: no reply within %ss (timeout)' % (command, node, self.params['timeout']),
                              option='timeout')
        if isinstance(reply, dict) and 'error' in reply:
            raise BrokerError('%s on %s failed: %s' % (command, node, reply['error']), option='state')
        return reply.get('ok', '') if isinstance(reply, dict) else ''

    def rejoin(self, nodes, lost):
        """After the broker went away (``lost``): reconnect, within wait_timeout, and return the
        state of ``nodes`` once they all answer again (workers reconnect on their own schedule)."""
        def probe():
            state = self.snapshot(nodes) if nodes else {}
            return all(node in state for node in nodes), state
        return wait_until(probe, self.params['wait_timeout'], self.params['wait_sleep'],
                          lambda state: 'nodes not answering after the broker came back: %s'
                          % ', '.join(node for node in nodes if node not in (state or {})),
                          reconnect=self.control.reconnect, lost=lost)[0]

    def wait(self, nodes, done, describe, track_gone=True):
        """Ask ``nodes`` again until ``done(snapshot)``; returns the last snapshot.

        With ``track_gone``, a node that misses GONE_AFTER snapshots in a row joins ``self.gone``
        and is asked no more (``done`` and ``describe`` decide what that means), except for
        RECONNECT_GRACE seconds after the broker came back.
        """
        misses = dict((node, 0) for node in nodes)
        back = [None]   # when the broker came back after going away

        def probe():
            asked = [node for node in nodes if node not in self.gone]
            state = self.snapshot(asked) if asked else {}
            if track_gone:
                grace = back[0] is not None and time.monotonic() - back[0] < RECONNECT_GRACE
                for node in asked:
                    misses[node] = 0 if node in state or grace else misses[node] + 1
                    if misses[node] >= GONE_AFTER:
                        self.gone.add(node)
            return done(state), state

        def reconnect():
            self.control.reconnect()
            back[0] = time.monotonic()
        return wait_until(probe, self.params['wait_timeout'], self.params['wait_sleep'], describe,
                          reconnect=reconnect)[0]


def public(state):
    return dict((k, v) for k, v in state.items() if k not in ('tasks', 'node'))


def label(command, arguments):
    """How an action shows in the result: 'cancel_consumer default', 'pool_grow 2', 'autoscale 8,2'."""
    return ' '.join([command] + [str(v) if not isinstance(v, list) else ','.join(map(str, v))
                                 for v in arguments.values()])


def plan(params, state):
    """The control commands, as (command, arguments), that bring one node to the desired state."""
    if params['state'] == 'stopped':
        return [('shutdown', {})]
    actions = []
    current = set(state['queues'])
    if params['state'] == 'consuming':
        wanted = set(params['queues'])
        actions += [('add_consumer', {'queue': q}) for q in sorted(wanted - current)]
        if params['exclusive']:
            actions += [('cancel_consumer', {'queue': q}) for q in sorted(current - wanted)]
    elif params['state'] == 'drained':
        cancel = current & set(params['queues']) if params['queues'] else current
        actions += [('cancel_consumer', {'queue': q}) for q in sorted(cancel)]
    if params['concurrency'] is not None:
        if state['autoscale'] is not None:
            raise BrokerError('concurrency: %s autoscales (%s); set autoscale instead'
                              % (state['node'], ','.join(map(str, state['autoscale']))), option='concurrency')
        if state['concurrency'] is None:
            raise BrokerError('concurrency: %s does not report its pool size' % state['node'], option='concurrency')
        delta = params['concurrency'] - state['concurrency']
        if delta:
            actions.append(('pool_grow' if delta > 0 else 'pool_shrink', {'n': abs(delta)}))
    if params['autoscale'] is not None:
        if state['autoscale'] is None:
            raise BrokerError('autoscale: %s runs without --autoscale, so its range cannot be set' % state['node'],
                              option='autoscale')
        if list(state['autoscale']) != params['autoscale']:
            actions.append(('autoscale', {'max': params['autoscale'][0], 'min': params['autoscale'][1]}))
    if params['events'] is not None:
        # Workers do not report whether task events are on: the command is sent, and its reply
        # ("already enabled") tells whether it changed anything.
        actions.append(('enable_events' if params['events'] else 'disable_events', {}))
    return actions


def converge(params, check_mode, result):
    broker = broker_from_params(params)
    result['broker'] = broker.facts()
    control = Control(broker, redis_layout(params))
    try:
        fleet = Fleet(control, params)
        before = fleet.snapshot()
        missing = fleet.expectation.missing(set(before))
        result['missing'] = missing
        if missing and params['state'] != 'stopped':
            raise BrokerError('nodes not online (state %s needs them answering): %s'
                              % (params['state'] or 'change', ', '.join(missing)), option='nodes')
        nodes = sorted(before)
        plans = dict((node, plan(params, before[node])) for node in nodes)
        for node in nodes:
            result['nodes'][node] = dict(before=public(before[node]), actions=[label(*a) for a in plans[node]])
        result['changed'] = any(plans.values())
        if check_mode or not result['changed']:
            for node in nodes:
                result['nodes'][node]['after'] = public(before[node])
            return
        unchanged = apply(fleet, params, nodes, plans)
        for node in nodes:
            plans[node] = [a for a in plans[node] if (node, a[0]) not in unchanged]
            result['nodes'][node]['actions'] = [label(*a) for a in plans[node]]
        result['changed'] = any(plans.values())
        try:
            after = confirm(fleet, params, nodes, plans)
        finally:
            result['gone'] = sorted(fleet.gone)
        for node in nodes:
            result['nodes'][node]['after'] = public(after[node]) if node in after else None
    finally:
        control.close()


def apply(fleet, params, nodes, plans):
    """Send each node its commands; returns the (node, command) pairs whose reply says nothing changed.

    If the broker goes away meanwhile, whether the command in flight arrived is unknown: once the
    broker and the nodes are back (within wait_timeout), what is left is planned again from their
    state then, so nothing is applied twice (a second pool_grow would grow the pool again).
    """
    unchanged = set()
    todo = list(nodes)
    actions = dict(plans)
    while todo:
        node = todo[0]
        try:
            for command, arguments in actions[node]:
                if command == 'shutdown':
                    fleet.control.send('shutdown', destination=[node])
                elif fleet.tell(node, command, arguments).startswith('task events already'):
                    unchanged.add((node, command))
        except BrokerError as error:
            if not error.lost:
                raise
            if params['state'] == 'stopped':
                fleet.rejoin([], error)   # a node that got its shutdown may be gone: sent again, it does no harm
                continue
            state = fleet.rejoin(todo, error)
            actions.update((n, plan(params, state[n])) for n in todo)
            continue
        todo.pop(0)
    return unchanged


def confirm(fleet, params, nodes, plans):
    """Ask again until the change shows; the workers' acknowledgements prove nothing."""
    changed = [node for node in nodes if plans[node]]
    if params['state'] == 'stopped':
        def gone(state):
            return not any(node in state for node in changed)
        return fleet.wait(changed, gone, lambda s: 'nodes still answering after shutdown: %s'
                          % ', '.join(sorted(n for n in changed if n in s)), track_gone=False)

    def applied(state):
        for node in changed:
            if node in fleet.gone and params['state'] == 'drained':
                continue  # a dead node consumes nothing
            if node in fleet.gone:
                raise BrokerError('%s stopped answering before the change could be confirmed (killed or crashed?)'
                                  % node, option='nodes')
            if node not in state:
                return False
            queues = set(state[node]['queues'])
            for command, arguments in plans[node]:
                if command in ('add_consumer', 'cancel_consumer') and (
                        (command == 'add_consumer') != (arguments['queue'] in queues)):
                    return False
            if params['concurrency'] is not None and state[node]['autoscale'] is None \
                    and state[node]['concurrency'] != params['concurrency']:
                return False
            if params['autoscale'] is not None and list(state[node]['autoscale'] or []) != params['autoscale']:
                return False
        return True

    def describe(state):
        return '; '.join('%s consumes %s with %s processes%s' % (
            node, ', '.join(state[node]['queues']) or 'nothing', state[node]['concurrency'],
            ', autoscale %s' % state[node]['autoscale'] if state[node]['autoscale'] else '')
            if node in state else '%s stopped answering' % node for node in changed)
    after = fleet.wait(changed, applied, describe) if changed else fleet.snapshot(nodes)
    if params['state'] != 'drained':
        return after

    def idle(state):
        # A node gone during the drain runs nothing any more: not waited for (reported as gone).
        return all(node in fleet.gone or (node in state and not state[node]['active'] and not state[node]['reserved'])
                   for node in nodes)

    def describe_busy(state):
        return 'nodes still holding tasks: ' + '; '.join(
            '%s: %s' % (node, ', '.join('%s %s[%s]' % (t['state'], t['name'], t['id'])
                                        for t in state[node]['tasks']) or 'idle')
            if node in state else '%s stopped answering (its unacknowledged tasks go back to the queue)' % node
            for node in nodes)
    return fleet.wait(nodes, idle, describe_busy)


def main():
    argument_spec = broker_argument_spec()
    argument_spec.update(redis_transport_argument_spec())
    argument_spec.update(
        nodes=dict(type='list', elements='str', default=list(ALL_NODES)),
        state=dict(type='str', choices=['consuming', 'drained', 'stopped']),
        concurrency=dict(type='int'),
        autoscale=dict(type='list', elements='int'),
        events=dict(type='bool'),
        queues=dict(type='list', elements='str'),
        exclusive=dict(type='bool', default=False),
        timeout=dict(type='float', default=2.0),
        wait_timeout=dict(type='float', default=300.0),
        wait_sleep=dict(type='float', default=0.5),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    missing = missing_library(module.params)
    if missing:
        module.fail_json(msg=missing_required_lib(missing[0]), exception=missing[1])

    result = dict(changed=False, all_nodes=module.params['nodes'] == ALL_NODES, nodes={}, missing=[], gone=[])
    started = time.monotonic()
    try:
        check_params(module.params)
        converge(module.params, module.check_mode, result)
        if result['gone']:
            module.warn('stopped answering during the drain, so not waited for (killed or crashed?); their '
                        'unacknowledged tasks go back to the queue: %s' % ', '.join(result['gone']))
    except BrokerError as error:
        if 'last_state' in error.details:
            last = error.details.pop('last_state')
            for node, info in result['nodes'].items():
                info['after'] = public(last[node]) if node in last else None
        fail_from_error(module, error, **result)
    result['elapsed'] = round(time.monotonic() - started, 3)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
