#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: celery_task
short_description: Revoke or terminate Celery tasks, and remove their messages so offline workers never run them
version_added: 0.2.0
description:
  - Makes the selected tasks revoked (or terminated), with the broker URL only (the Celery app is not needed).
  - O(state=revoked) broadcasts C(revoke) for every selected id (given in O(ids), found in the queues read, on the
    workers, or held unacknowledged). Because a broadcast never reaches a worker that is offline, it also removes
    the selected ready messages from the queues (every priority sub-queue on Redis). Only those messages go; the
    others stay in their order, with the same guarantees as a filtered purge of M(celeryops.fleet.celery_queue).
    On Redis the list is rewritten under WATCH and nothing changes if a producer or consumer touched it meanwhile
    (the pass is retried); on RabbitMQ the messages are received, the selected ones acked and the others requeued
    in their places (with the C(redelivered) flag set). Only classic RabbitMQ queues are read; a quorum queue or a
    stream is refused before anything is read or sent.
  - On Redis, selected messages held unacknowledged in kombu's C(unacked) hash (prefetched, or held by a worker
    that went away; kombu restores those to their queue after the visibility timeout) are reported in RV(held),
    and removed only with O(remove_held=true).
  - O(state=terminated) also terminates the selected tasks that are running (C(revoke) with C(terminate)), then
    asks again until they have left the workers' active lists. Only the prefork, eventlet and gevent pools can
    terminate a task; a node running the threads or solo pool is reported in RV(cannot_terminate), with a warning,
    and its tasks are revoked but keep running.
  - Workers keep revoked ids in memory only (unless started with C(--statedb)), so a restarted worker forgets them.
    The messages removed from the queues stay removed.
  - The run is V(changed) when it sent a revoke (an id not yet in every answering node's revoked list), removed a
    message, or terminated a task. A second run finds nothing left to do. When no worker answers, the revoke of the
    ids given is broadcast all the same, unconfirmed and with a warning, and the run reports V(changed).
  - The nodes that did not confirm a revoke are in RV(not_answering); their revoke is not confirmed.
options:
  state:
    description:
      - V(revoked) revokes the selected tasks and removes their messages from the queues.
      - V(terminated) also terminates the selected running tasks with O(signal) (prefork, eventlet, gevent pools).
    type: str
    choices: [revoked, terminated]
    default: revoked
  signal:
    description:
      - With O(state=terminated), the signal sent to the pool process running a task, such as V(SIGTERM),
        V(SIGKILL) or V(TERM).
    type: str
    default: SIGTERM
  stamped_headers:
    description:
      - Celery 5.3+. Revoke tasks by stamp (C(revoke_by_stamped_headers)), header name -> a value or a list of
        values. Ready messages whose headers carry one of the values are removed from the queues too.
      - Workers do not report revoked stamps, so this broadcast is sent on every run (and the run reports
        V(changed)).
    type: dict
  remove_held:
    description:
      - Redis only. Also delete the selected messages held in kombu's C(unacked) hash (RV(held)), so that a worker
        that went away does not get them back after the visibility timeout.
    type: bool
    default: false
  terminate_timeout:
    description:
      - With O(state=terminated), seconds to wait until the terminated tasks have left the workers' active lists.
    type: float
    default: 30.0
extends_documentation_fragment:
  - celeryops.fleet.broker
  - celeryops.fleet.redis_transport
  - celeryops.fleet.queue_options
  - celeryops.fleet.task_selectors
  - celeryops.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Lists exactly what would be revoked (RV(revoked)), removed (RV(removed)) and terminated (RV(terminated)),
        and sends nothing.
  diff_mode:
    support: full
    details:
      - Selected messages per queue and selected tasks per node (active, reserved, scheduled, revoked) before and
        after.
requirements:
  - redis (for a Redis broker) or pika (for RabbitMQ) where the module runs; not celery or kombu
author:
  - celeryops.fleet developers (@celeryops)
"""

EXAMPLES = r"""
- name: See what revoking a runaway task would do
  celeryops.fleet.celery_task:
    broker_url: redis://127.0.0.1:6379/0
    task_names: [proj.tasks.rebuild_thumbnails]
    queues: [default, media]
  check_mode: true
  diff: true

- name: Revoke it everywhere, offline workers included
  celeryops.fleet.celery_task:
    broker_url: redis://127.0.0.1:6379/0
    task_names: [proj.tasks.rebuild_thumbnails]
    queues: [default, media]
    expected_nodes: [default@web1, media@web2]

- name: Stop a task that has been running for over an hour (prefork workers)
  celeryops.fleet.celery_task:
    broker_url: "{{ broker_url }}"
    task_names: [proj.tasks.build_report]
    older_than: 3600
    state: terminated
    signal: SIGTERM
"""

RETURN = r"""
revoked:
  description: The ids a revoke was sent for (in check mode, would be sent for).
  returned: always
  type: list
  elements: str
removed:
  description: Queue -> ids of the messages removed (in check mode, that would be removed).
  returned: always
  type: dict
  sample: {"default": ["5c1b0a5e-4c8a-4a9c-8c43-7f4b2a1d9e10"]}
held:
  description: Redis only. Selected messages held in kombu's C(unacked) hash, with C(id), C(name), C(queue) and
    C(delivery_tag).
  returned: always
  type: list
  elements: dict
removed_held:
  description: Entries of RV(held) deleted (with O(remove_held=true)).
  returned: always
  type: int
terminated:
  description: Ids of running tasks terminated (in check mode, that would be).
  returned: always
  type: list
  elements: str
cannot_terminate:
  description: Per node whose pool cannot terminate a task (threads, solo), C(node), C(pool) and the C(ids) left
    running.
  returned: always
  type: list
  elements: dict
tasks:
  description: The selected tasks found on workers (active, reserved, scheduled) or held, as
    M(celeryops.fleet.celery_task_info) returns them, before the change.
  returned: always
  type: list
  elements: dict
nodes:
  description: The workers that answered the first broadcast.
  returned: always
  type: list
  elements: str
missing:
  description: Expected nodes (O(expected_nodes)) that did not answer.
  returned: always
  type: list
  elements: str
duplicates:
  description: Node names more than one worker answered for.
  returned: always
  type: list
  elements: str
not_answering:
  description: Nodes whose revoke is not confirmed, expected ones that did not answer included.
  returned: always
  type: list
  elements: str
stamped_headers_sent:
  description: Whether C(revoke_by_stamped_headers) was broadcast.
  returned: always
  type: bool
management_error:
  description: RabbitMQ only. Why the management API could not be used, when it could not.
  returned: when the management API could not be used
  type: str
broker:
  description:
    - The broker that answered, without credentials.
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
diff:
  description: Selected messages per queue and selected tasks per node, before and after.
  returned: in diff mode
  type: dict
  sample:
    before: {queues: {default: 3}, nodes: {w1@h: {active: 1, reserved: 0, scheduled: 0, revoked: 0}}}
    after: {queues: {default: 0}, nodes: {w1@h: {active: 0, reserved: 0, scheduled: 0, revoked: 4}}}
"""

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (
    OptionError, broker_from_params, check_seconds)
from ansible_collections.celeryops.fleet.plugins.module_utils._module import FleetModule
from ansible_collections.celeryops.fleet.plugins.module_utils._tasks import (
    check_selectors, check_signal, revoke, selector_argument_spec)


def check_params(params):
    check_selectors(params, required=True, extra=('stamped_headers',))
    params['signal'] = check_signal(params['signal'])
    check_seconds(params['terminate_timeout'], 'terminate_timeout')
    for header, values in (params['stamped_headers'] or {}).items():
        values = values if isinstance(values, list) else [values]
        if not header or not values or not all(isinstance(v, str) and v for v in values):
            raise OptionError('stamped_headers: each header needs a stamp value or a list of them (strings), got '
                              '%r for %r' % (values, header), option='stamped_headers')


def main():
    spec = selector_argument_spec()
    spec.update(
        state=dict(type='str', default='revoked', choices=['revoked', 'terminated']),
        signal=dict(type='str', default='SIGTERM'),
        stamped_headers=dict(type='dict'),
        remove_held=dict(type='bool', default=False),
        terminate_timeout=dict(type='float', default=30.0),
    )
    module = FleetModule(argument_spec=spec, queue_options=True)
    result = dict(changed=False, revoked=[], removed={}, held=[], removed_held=0, terminated=[], cannot_terminate=[],
                  tasks=[], nodes=[], missing=[], duplicates=[], not_answering=[], stamped_headers_sent=False)
    with module.fail_on_error(result):
        check_params(module.params)
        broker = broker_from_params(module.params)
        result['broker'] = broker.facts()
        revoke(module.params, broker, module.check_mode, module.warn, result)
    diff = result.pop('diff', None)
    if module._diff and diff is not None:
        result['diff'] = diff
    module.exit_json(**result)


if __name__ == '__main__':
    main()
