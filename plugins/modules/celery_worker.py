#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: celery_worker
short_description: Make running Celery workers consume queues, drain, stop, restart their pool, or set task limits
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
    the other nodes' drain still completes. With V(consuming), such a node fails the module at once. A named node
    that does not answer at all is already drained (RV(missing)).
  - V(stopped) sends a warm shutdown and waits until the nodes stop answering. Nodes already gone are not a change.
  - V(restarted_pool) restarts the nodes' pool (C(pool_restart)). Celery marks every pool process to exit and
    hands the pool one no-op task, so one process is replaced at once; each other process is replaced after the
    next task it takes (an idle process waits for a task before it sees the restart), so an idle pool shows one new
    process and the rest follow as tasks come. The module confirms that the restart took effect (a process of
    before gone from C(stats), and processes running); RV(nodes) shows the processes before and after. Celery
    allows it only on workers whose setting C(worker_pool_restarts) is true (in the app, or on the command line
    as C(celery worker ... -- worker_pool_restarts=True), or C(celery_workers[].pool_restarts) of the
    P(celeryops.fleet.worker#role) role) and with the prefork pool; the module reads the nodes' C(conf) and
    C(stats) first and, if any node does not allow it, fails naming it before anything is sent. It is an action,
    not a state, so it always reports a change.
  - O(rate_limits) and O(time_limits) are desired state per task, read back from C(inspect registered rate_limit
    time_limit soft_time_limit), set (C(rate_limit), C(time_limit)) only on the nodes where they differ, and
    confirmed by reading them again. They may go with any O(state) but V(stopped), or alone.
  - Limits set this way live in the running worker only and are lost when it restarts; the module warns so when it
    sets any. To keep them, set them where the worker starts (the app's C(task_annotations), or
    C(celery_workers[].rate_limits) and C(celery_workers[].time_limits) of the P(celeryops.fleet.worker#role) role,
    which gives them to C(celery worker) as C(task_annotations)).
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
      - A named node that does not answer (or a pattern that matches no node that answers) consumes and runs nothing,
        so for V(drained) and V(stopped) it is already where it should be. It is listed in RV(missing) and is no
        change, so a drain or a stop before a restart is one call, whether or not the nodes run. For V(consuming)
        and V(restarted_pool), and with O(concurrency), O(autoscale), O(events), O(rate_limits) or O(time_limits),
        it is an error naming the nodes.
    type: list
    elements: str
    default: ['*']
  state:
    description:
      - The state the nodes should be in. Optional when only O(concurrency), O(autoscale), O(events), O(rate_limits)
        or O(time_limits) change.
    type: str
    choices: [consuming, drained, stopped, restarted_pool]
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
  rate_limits:
    description:
      - Per task name, the rate limit the nodes should apply, as Celery writes it (V(10/s), V(10/m), V(10/h), or a
        number of tasks per second); V(null) for no limit.
      - Compared as tasks per second, so V(60/m) on a node is V(1/s). A rate that is not Celery's syntax, or V(0),
        is refused naming this option; a task a node does not register fails the module naming the task and the
        node, before anything is sent.
      - Lost when the worker restarts (see the description).
    type: dict
  time_limits:
    description:
      - Per task name, V({soft=seconds, hard=seconds}) (a dict with the keys C(soft) and C(hard)), the soft limit (C(SoftTimeLimitExceeded) is raised in the
        task) and the hard limit (the pool process is killed). Either left out or V(null) means no such limit; a
        task's V(null) means neither.
      - Limits must be more than 0, and soft not more than hard; otherwise the module fails naming this option. A task
        a node does not register fails the module naming the task and the node, before anything is sent.
      - Only the prefork pool enforces time limits; Celery accepts and shows them on the other pools too.
      - These are the task's own limits. A worker-wide C(--time-limit) / C(--soft-time-limit) applies to the tasks
        without their own and is not shown here; V(null) for a task means it falls back to that.
      - Lost when the worker restarts (see the description).
    type: dict
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

- name: Drain two nodes before their restart; one that does not run is already drained (listed in missing)
  celeryops.fleet.celery_worker:
    broker_url: "{{ broker_url }}"
    nodes: [default@web1, reports@web1]
    state: drained
  delegate_to: localhost

- name: Stop them (warm shutdown), confirmed when they stop answering
  celeryops.fleet.celery_worker:
    broker_url: "{{ broker_url }}"
    nodes: ["*@{{ inventory_hostname }}"]
    state: stopped
  delegate_to: localhost

- name: Limit how fast and how long the mail tasks run, on every node
  celeryops.fleet.celery_worker:
    broker_url: "{{ broker_url }}"
    rate_limits:
      proj.tasks.send_mail: 10/m
      proj.tasks.resize: null      # no rate limit
    time_limits:
      proj.tasks.send_mail: {soft: 30, hard: 60}
  delegate_to: localhost

- name: Restart the pool processes of workers started with worker_pool_restarts (a leaking library, say)
  celeryops.fleet.celery_worker:
    broker_url: "{{ broker_url }}"
    nodes: ["*@{{ inventory_hostname }}"]
    state: restarted_pool
    wait_timeout: 600
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
  description:
    - Per node acted on, its state before and after and the control commands sent.
    - With O(rate_limits) or O(time_limits), C(before) and C(after) also hold C(rate_limits) (task -> rate, or null)
      and C(time_limits) (task -> {soft, hard}, in seconds or null) of the tasks named; with V(restarted_pool),
      C(pool_processes) (the pids of the pool's processes).
    - Actions are written as C(celery control) takes them, like C(rate_limit proj.add 10/m) or C(time_limit proj.add
      30.0 60.0) (task, soft, hard).
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
  description:
    - Named nodes (and patterns matching no node) that did not answer. With V(drained) or V(stopped) they are already
      in that state and are no change; otherwise the module fails naming them.
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
  description:
    - The broker, without credentials.
    - Its C(transport) (V(redis) or V(amqp)), C(tls), C(host), C(port), C(user), and C(db) (Redis) or C(vhost) (RabbitMQ).
    - With a failover list (C(url1;url2) in O(broker_url)) or Redis Sentinel (C(sentinel://)), C(host) and C(port) name
      the URL that answered, or the master the Sentinels named (after a failover, the new one). C(failover) then says
      which URL answered (C(answered), its position from 1, of C(urls)) and why each one before it was skipped
      (C(unreachable), each with C(endpoint) and C(error)); C(sentinel) gives the C(master_name), the C(sentinels)
      (C(host:port), in the order given) and the one that C(answered).
    - C(user) is V(null), with a warning, when the password is the user name or part of it (showing the user would show
      the password).
  returned: always
  type: dict
  sample: {"transport": "redis", "tls": false, "host": "127.0.0.1", "port": 6380, "db": 0, "user": null,
           "sentinel": {"master_name": "mymaster", "sentinels": ["127.0.0.1:26379", "127.0.0.1:26380"],
                        "answered": "127.0.0.1:26379"}}
elapsed:
  description: Seconds the module took.
  returned: success
  type: float
"""

import time

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import OptionError, broker_from_params, check_seconds
from ansible_collections.celeryops.fleet.plugins.module_utils._control import Control, check_node_names
from ansible_collections.celeryops.fleet.plugins.module_utils._module import FleetModule
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import redis_layout
from ansible_collections.celeryops.fleet.plugins.module_utils._workers import (
    ALL_NODES, check_rate_limits, check_time_limits, converge)


def check_params(params):
    """What the argument spec cannot say; raises OptionError."""
    # An empty list (from an empty variable) must never widen to every node. (A null is refused
    # by Ansible itself: with a default, nodes must be a list.)
    if not params['nodes']:
        raise OptionError('nodes: the list is empty, so there is no node to act on (omit nodes to act on every node '
                          'that answers)', option='nodes')
    check_node_names(params['nodes'], 'nodes')
    if params['queues'] == []:
        # Nor to every queue (state: drained).
        raise OptionError('queues: the list is empty, so there is no queue to act on (omit queues to drain every '
                          'queue)', option='queues')
    for queue in params['queues'] or []:
        if not queue or not queue.strip():
            raise OptionError('queues: a queue name is empty', option='queues')
    if params['state'] == 'stopped' and (params['concurrency'] is not None or params['autoscale'] is not None
                                         or params['events'] is not None):
        raise OptionError('state: stopped goes with neither concurrency, autoscale nor events', option='state')
    if params['state'] == 'stopped' and (params['rate_limits'] is not None or params['time_limits'] is not None):
        raise OptionError('state: stopped goes with neither rate_limits nor time_limits (a stopped worker forgets '
                          'them)', option='state')
    params['rate_limits'] = check_rate_limits(params['rate_limits'])
    params['time_limits'] = check_time_limits(params['time_limits'])
    if params['concurrency'] is not None and params['concurrency'] < 1:
        raise OptionError('concurrency must be 1 or more, got %d' % params['concurrency'], option='concurrency')
    if params['autoscale'] is not None:
        if len(params['autoscale']) != 2 or min(params['autoscale']) < 0:
            raise OptionError('autoscale must be [max, min], two numbers of 0 or more, got %s' % params['autoscale'],
                              option='autoscale')
        if params['autoscale'][0] < params['autoscale'][1] or params['autoscale'][0] < 1:
            raise OptionError('autoscale: max (%d) must be at least min (%d) and at least 1'
                              % tuple(params['autoscale']), option='autoscale')
    if params['exclusive'] and params['state'] != 'consuming':
        raise OptionError('exclusive only goes with state: consuming', option='exclusive')
    for option in ('timeout', 'wait_timeout', 'wait_sleep'):
        check_seconds(params[option], option)


def main():
    module = FleetModule(
        argument_spec=dict(
            nodes=dict(type='list', elements='str', default=list(ALL_NODES)),
            state=dict(type='str', choices=['consuming', 'drained', 'stopped', 'restarted_pool']),
            concurrency=dict(type='int'),
            autoscale=dict(type='list', elements='int'),
            events=dict(type='bool'),
            rate_limits=dict(type='dict'),
            time_limits=dict(type='dict'),
            queues=dict(type='list', elements='str'),
            exclusive=dict(type='bool', default=False),
            timeout=dict(type='float', default=2.0),
            wait_timeout=dict(type='float', default=300.0),
            wait_sleep=dict(type='float', default=0.5),
        ),
        mutually_exclusive=[('concurrency', 'autoscale')],
        required_one_of=[('state', 'concurrency', 'autoscale', 'events', 'rate_limits', 'time_limits')],
        required_if=[('state', 'consuming', ['queues'])],
    )
    params = module.params
    result = dict(changed=False, all_nodes=params['nodes'] == ALL_NODES, nodes={}, missing=[], gone=[])
    started = time.monotonic()
    with module.fail_on_error(result):
        check_params(params)
        broker = broker_from_params(params)
        result['broker'] = broker.facts()
        control = Control(broker, redis_layout(params))
        try:
            converge(control, params, module.check_mode, result)
        finally:
            control.close()
    if result['gone']:
        module.warn('stopped answering during the drain, so not waited for (killed or crashed?); their '
                    'unacknowledged tasks go back to the queue: %s' % ', '.join(result['gone']))
    limits = sorted(set(action.split(' ')[0] for info in result['nodes'].values() for action in info['actions']
                        if action.split(' ')[0] in ('rate_limit', 'time_limit')))
    if limits and result['changed']:
        module.warn('%s set at run time last until the worker restarts; to keep them, set them where the worker '
                    'starts (the app\'s task_annotations, or the worker role\'s celery_workers[].rate_limits and '
                    'time_limits)' % ' and '.join(limits))
    result['elapsed'] = round(time.monotonic() - started, 3)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
