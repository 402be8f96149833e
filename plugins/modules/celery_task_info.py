#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: celery_task_info
short_description: Where Celery tasks are (queued, on a worker, running, revoked) and which are stuck
version_added: 0.2.0
description:
  - Finds the selected tasks wherever they are, with the broker URL only (the Celery app is not needed).
  - One broadcast asks every worker for its active, reserved, scheduled and revoked tasks and the queues it
    consumes; each queue is read once; on Redis, kombu's C(unacked) hash is read once.
  - A task is V(queued) (a ready message, with its queue, its position in run order and its priority), V(reserved)
    (prefetched by a worker), V(scheduled) (on a worker, waiting for its ETA), V(active) (running, with node, run time and
    pool process id), V(unacked) (Redis only, a message held by a worker that does not report it, such as an
    offline or killed worker; kombu gives it back to its queue after the visibility timeout) or, selected by id
    only, V(revoked) (known only from the workers' lists of revoked ids).
  - Optionally reads each task's stored state from a Redis result backend (O(result_backend)).
  - Can fail, or wait, on thresholds (O(max_stuck), O(max_tasks)) so a health check or CI can gate on them.
  - Never changes anything. On RabbitMQ, reading a queue receives its messages and gives them back (see O(queues)).
options:
  result_backend:
    description:
      - A Redis URL of the result backend (V(redis://host:6379/1)); see also O(result_backend_broker).
        The state and C(date_done) stored under C(celery-task-meta-<id>) are returned for each task found and each
        id not found.
      - Only JSON results are read (Celery's default serializer); any other is state V(unknown), and nothing is
        ever unpickled. A task with no stored result (Celery's C(PENDING)) has no entry.
      - The TLS options of the broker apply to it too.
    type: str
  result_backend_broker:
    description:
      - Read results as O(result_backend) does, from the broker's own Redis (O(broker_url)), when the result
        backend is the broker. A C(sentinel://) broker works too (its master, named by the Sentinels with
        O(master_name) and O(sentinel_password)); O(result_backend) itself takes C(redis://) or C(rediss://) only.
    type: bool
    default: false
  max_stuck:
    description:
      - Threshold on the tasks active for longer than O(older_than) (RV(stuck)). With O(wait=true) the module polls
        until at most this many are; otherwise it fails at once when more are. Needs O(older_than).
    type: int
  max_tasks:
    description:
      - Threshold on the tasks selected (C(total) of RV(counts)), like O(max_stuck).
    type: int
extends_documentation_fragment:
  - celeryops.fleet.broker
  - celeryops.fleet.redis_transport
  - celeryops.fleet.queue_options
  - celeryops.fleet.task_selectors
  - celeryops.fleet.wait
  - celeryops.fleet.attributes
  - celeryops.fleet.attributes.info_module
requirements:
  - redis (for a Redis broker or result backend) or pika (for RabbitMQ) where the module runs; not celery or kombu
author:
  - celeryops.fleet developers (@celeryops)
"""

EXAMPLES = r"""
- name: Where is this task?
  celeryops.fleet.celery_task_info:
    broker_url: redis://127.0.0.1:6379/0
    ids: [5c1b0a5e-4c8a-4a9c-8c43-7f4b2a1d9e10]
    result_backend: redis://127.0.0.1:6379/1
  register: where

- name: Fail when a report has been running for more than ten minutes
  celeryops.fleet.celery_task_info:
    broker_url: "{{ broker_url }}"
    task_names: [proj.tasks.build_report]
    older_than: 600
    max_stuck: 0
    expected_nodes: [reports@web1, reports@web2]

- name: Every queued or running task for customer 42
  celeryops.fleet.celery_task_info:
    queues: [default, reports]
    kwargs_contains: {customer_id: 42}
  environment:
    CELERY_BROKER_URL: "{{ broker_url }}"
"""

RETURN = r"""
tasks:
  description: One entry per place a selected task was found, active first, then scheduled, reserved, unacked,
    queued (in run order) and revoked.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Task id.
      type: str
    name:
      description: Task name (V(null) when only the revoked list names the id).
      type: str
    where:
      description: V(queued), V(reserved), V(scheduled), V(active), V(unacked) or V(revoked).
      type: str
    node:
      description: The worker holding it (reserved, scheduled, active).
      type: str
    queue:
      description: The queue of the message (queued, unacked), or the routing key the worker received it with.
      type: str
    position:
      description: Queued only. Position in run order, 1 runs next (on Redis lower priority steps run first).
      type: int
    priority:
      description: The message's priority (queued, unacked, scheduled).
      type: int
    priority_step:
      description: Redis, queued only. The priority sub-queue it is in.
      type: int
      returned: for queued tasks on Redis
    eta:
      description: The ETA (scheduled, and messages that carry one).
      type: str
    runtime:
      description: Active only. Seconds it has been running.
      type: float
    worker_pid:
      description: Active only. The pool process running it.
      type: int
    revoked_on:
      description: The answering nodes that list the id as revoked.
      type: list
      elements: str
    delivery_tag:
      description: Unacked only. Its field in kombu's C(unacked) hash.
      type: str
      returned: for unacked tasks
    result:
      description: With O(result_backend), the stored C(state) and C(date_done); V(null) when nothing is stored.
      type: dict
      returned: with O(result_backend) or O(result_backend_broker)
stuck:
  description: With O(older_than), the active tasks selected (running at least that long), newest first.
  returned: always
  type: list
  elements: dict
counts:
  description: Entries of RV(tasks) per place, C(total), and C(stuck).
  returned: always
  type: dict
  sample: {"queued": 3, "reserved": 0, "scheduled": 1, "active": 2, "unacked": 0, "revoked": 0, "total": 6, "stuck": 1}
not_found:
  description: Ids of O(ids) found nowhere (no queue read, no answering worker).
  returned: always
  type: list
  elements: str
result_states:
  description:
    - With O(result_backend), id -> C(state), C(date_done) for the ids found and not found that have a stored result.
    - Not named C(results), which Ansible keeps for loops (ansible-core 2.16 renames it).
  returned: with O(result_backend) or O(result_backend_broker)
  type: dict
queues:
  description: The queues read, with C(name), C(exists), C(messages) (ready) and C(matched).
  returned: always
  type: list
  elements: dict
nodes:
  description: The workers that answered the broadcast.
  returned: always
  type: list
  elements: str
missing:
  description: Expected nodes (O(expected_nodes)) that did not answer; what they hold is not in RV(tasks).
  returned: always
  type: list
  elements: str
duplicates:
  description: Node names more than one worker answered for.
  returned: always
  type: list
  elements: str
undecodable:
  description: Worker replies skipped because they could not be read.
  returned: always
  type: int
waited:
  description: Seconds spent waiting for the thresholds, with O(wait=true).
  returned: when O(wait=true)
  type: float
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
"""

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import OptionError, broker_from_params
from ansible_collections.celeryops.fleet.plugins.module_utils._module import FleetModule
from ansible_collections.celeryops.fleet.plugins.module_utils._tasks import (
    backend_broker, check_selectors, selector_argument_spec, task_info)
from ansible_collections.celeryops.fleet.plugins.module_utils._wait import check_wait_params


def check_params(params):
    check_wait_params(params)
    check_selectors(params)
    for option in ('max_stuck', 'max_tasks'):
        if params[option] is not None and params[option] < 0:
            raise OptionError('%s must be 0 or more, got %d' % (option, params[option]), option=option)
    backend_broker(params)


def main():
    spec = selector_argument_spec()
    spec.update(result_backend=dict(type='str', no_log=True), result_backend_broker=dict(type='bool', default=False),
                max_stuck=dict(type='int'), max_tasks=dict(type='int'))
    module = FleetModule(argument_spec=spec, queue_options=True, wait_options=True,
                         required_by={'max_stuck': 'older_than'},
                         mutually_exclusive=[('result_backend', 'result_backend_broker')])
    result = dict(changed=False, tasks=[], stuck=[], counts={}, not_found=[], queues=[], nodes=[], missing=[],
                  duplicates=[])
    with module.fail_on_error(result):
        check_params(module.params)
        broker = broker_from_params(module.params)
        result['broker'] = broker.facts()
        task_info(module.params, broker, result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
