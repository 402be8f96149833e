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
    and, if O(wait_timeout) runs out, fails listing what each node still holds.
  - V(stopped) sends a warm shutdown and waits until the nodes stop answering. Nodes already gone are not a change.
  - Every change is confirmed by asking the workers again; a second run with the same options changes nothing.
  - In check mode the module asks the workers for their state and reports what it would do, without sending any
    control command.
options:
  nodes:
    description:
      - Node names (like V(worker1@web1)) or glob patterns of the workers to act on.
      - When omitted, every node that answers.
      - A named node that does not answer is an error for V(consuming) and V(drained); for V(stopped) it is already
        where it should be.
    type: list
    elements: str
  state:
    description:
      - The state the nodes should be in.
    type: str
    choices: [consuming, drained, stopped]
    required: true
  queues:
    description:
      - With V(consuming), the queues to consume (required). With V(drained), the queues to stop consuming (default
        every queue).
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
    type: float
    default: 2.0
  wait_timeout:
    description:
      - Seconds to wait for the change to show (consumers gone, tasks finished, nodes silent).
    type: float
    default: 300.0
  wait_sleep:
    description:
      - Seconds between two checks while waiting.
    type: float
    default: 0.5
  global_keyprefix:
    description:
      - Redis only. kombu's C(global_keyprefix) transport option of the Celery app, if it sets one.
    type: str
    default: ''
extends_documentation_fragment:
  - celeryops.fleet.broker
  - celeryops.fleet.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
requirements:
  - celery (for kombu) where the module runs
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
      before: {queues: [default, mail], active: 2, reserved: 3}
      after: {queues: [], active: 0, reserved: 0}
      actions: ["cancel_consumer default", "cancel_consumer mail"]
missing:
  description: Named nodes that did not answer.
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
    BrokerError, broker_argument_spec, broker_from_params, fail_from_error)
from ansible_collections.celeryops.fleet.plugins.module_utils._control import (
    HAS_KOMBU, KOMBU_IMPORT_ERROR, Control, Expectation, is_pattern)
from ansible_collections.celeryops.fleet.plugins.module_utils._wait import wait_until

SNAPSHOT = {'ping': {}, 'active_queues': {}, 'active': {}, 'reserved': {}}


def check_params(params):
    for node in params['nodes'] or []:
        if not node or not node.strip():
            raise BrokerError('nodes: a node name is empty', option='nodes')
        if not is_pattern(node) and ('@' not in node or node.startswith('@') or node.endswith('@')):
            raise BrokerError("nodes: '%s' is not a node name like worker1@host (or a pattern like *@host)" % node,
                              option='nodes')
    for queue in params['queues'] or []:
        if not queue or not queue.strip():
            raise BrokerError('queues: a queue name is empty', option='queues')
    if params['state'] == 'consuming' and not params['queues']:
        raise BrokerError('queues is required with state: consuming', option='queues')
    if params['exclusive'] and params['state'] != 'consuming':
        raise BrokerError('exclusive only goes with state: consuming', option='exclusive')
    for option in ('timeout', 'wait_timeout', 'wait_sleep'):
        if params[option] <= 0:
            raise BrokerError('%s must be a positive number of seconds, got %s' % (option, params[option]),
                              option=option)


class Fleet(object):
    """The targeted nodes, asked about and told through one Control."""

    def __init__(self, control, params):
        self.control = control
        self.params = params
        self.expectation = Expectation(params['nodes'])

    def snapshot(self, nodes=None):
        """node -> {queues, active, reserved} for the targeted nodes that answer."""
        expectation = Expectation(sorted(nodes)) if nodes is not None else self.expectation
        replies = self.control.request(SNAPSHOT, expectation, destination=sorted(nodes) if nodes else None,
                                       timeout=self.params['timeout'])
        state = {}
        for node in replies.nodes('ping'):
            if self.params['nodes'] and not self.expectation.expects(node):
                continue
            queues = replies.first('active_queues').get(node) or []
            state[node] = dict(queues=sorted(q.get('name') for q in queues if isinstance(q, dict)),
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
        if isinstance(reply, dict) and 'error' in reply:
            raise BrokerError('%s on %s failed: %s' % (command, node, reply['error']), option='state')

    def wait(self, nodes, done, describe):
        """Ask ``nodes`` again until ``done(snapshot)``; returns the last snapshot."""
        def probe():
            state = self.snapshot(nodes)
            return done(state), state
        return wait_until(probe, self.params['wait_timeout'], self.params['wait_sleep'], describe)[0]


def public(state):
    return dict((k, v) for k, v in state.items() if k != 'tasks')


def converge(params, check_mode, result):
    broker = broker_from_params(params)
    result['broker'] = broker.facts()
    control = Control(broker, params['global_keyprefix'])
    try:
        fleet = Fleet(control, params)
        before = fleet.snapshot()
        missing = fleet.expectation.missing(set(before))
        result['missing'] = missing
        if missing and params['state'] != 'stopped':
            raise BrokerError('nodes not online (state %s needs them answering): %s'
                              % (params['state'], ', '.join(missing)), option='nodes')
        nodes = sorted(before)
        plans = dict((node, plan(params, before[node])) for node in nodes)
        for node in nodes:
            result['nodes'][node] = dict(before=public(before[node]), actions=plans[node])
        result['changed'] = any(plans.values())
        if check_mode or not result['changed']:
            for node in nodes:
                result['nodes'][node]['after'] = public(before[node])
            return
        for node in nodes:
            for action in plans[node]:
                command, _space, argument = action.partition(' ')
                if command == 'shutdown':
                    control.send('shutdown', destination=[node])
                else:
                    fleet.tell(node, command, {'queue': argument})
        after = confirm(fleet, params, nodes, plans)
        for node in nodes:
            result['nodes'][node]['after'] = public(after[node]) if node in after else None
    finally:
        control.close()


def plan(params, state):
    """The control commands that bring one node to the desired state, as 'command argument'."""
    if params['state'] == 'stopped':
        return ['shutdown']
    current = set(state['queues'])
    if params['state'] == 'consuming':
        wanted = set(params['queues'])
        actions = ['add_consumer %s' % q for q in sorted(wanted - current)]
        if params['exclusive']:
            actions += ['cancel_consumer %s' % q for q in sorted(current - wanted)]
        return actions
    cancel = current & set(params['queues']) if params['queues'] else current
    return ['cancel_consumer %s' % q for q in sorted(cancel)]


def confirm(fleet, params, nodes, plans):
    """Ask again until the change shows; the workers' acknowledgements prove nothing."""
    changed = [node for node in nodes if plans[node]]
    if params['state'] == 'stopped':
        def gone(state):
            return not any(node in state for node in changed)
        return fleet.wait(changed, gone, lambda s: 'nodes still answering after shutdown: %s'
                          % ', '.join(sorted(n for n in changed if n in s)))

    def queues_right(state):
        for node in changed:
            if node not in state:
                return False
            queues = set(state[node]['queues'])
            for action in plans[node]:
                command, _space, queue = action.partition(' ')
                if (command == 'add_consumer') != (queue in queues):
                    return False
        return True

    def describe_queues(state):
        return '; '.join('%s consumes %s' % (node, ', '.join(state[node]['queues']) or 'nothing')
                         if node in state else '%s stopped answering' % node for node in changed)
    after = fleet.wait(changed, queues_right, describe_queues)
    if params['state'] != 'drained':
        return after

    def idle(state):
        return all(node in state and not state[node]['active'] and not state[node]['reserved'] for node in nodes)

    def describe_busy(state):
        return 'nodes still holding tasks: ' + '; '.join(
            '%s: %s' % (node, ', '.join('%s %s[%s]' % (t['state'], t['name'], t['id'])
                                        for t in state[node]['tasks']) or 'idle')
            if node in state else '%s stopped answering (its unacknowledged tasks go back to the queue)' % node
            for node in nodes)
    return fleet.wait(nodes, idle, describe_busy)


def main():
    argument_spec = broker_argument_spec()
    argument_spec.update(
        nodes=dict(type='list', elements='str'),
        state=dict(type='str', required=True, choices=['consuming', 'drained', 'stopped']),
        queues=dict(type='list', elements='str'),
        exclusive=dict(type='bool', default=False),
        timeout=dict(type='float', default=2.0),
        wait_timeout=dict(type='float', default=300.0),
        wait_sleep=dict(type='float', default=0.5),
        global_keyprefix=dict(type='str', default='', no_log=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not HAS_KOMBU:
        module.fail_json(msg=missing_required_lib('celery'), exception=KOMBU_IMPORT_ERROR)

    result = dict(changed=False, nodes={}, missing=[])
    started = time.monotonic()
    try:
        check_params(module.params)
        converge(module.params, module.check_mode, result)
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
