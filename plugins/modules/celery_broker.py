#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: celery_broker
short_description: Clean up what M(celeryops.fleet.celery_broker_info) finds, never a queue a live consumer uses
version_added: 0.2.0
description:
  - Deletes orphaned reply lists/queues and stale event queues, and puts overdue unacknowledged messages back at the
    head of their queues, straight on the broker and without a worker.
  - What is cleaned is found exactly as M(celeryops.fleet.celery_broker_info) finds it (the same code); see its
    description for the kinds. Nothing else on the broker changes.
  - "Every deletion re-checks on the broker, at that instant, that it still applies. Redis: one script per reply
    queue deletes its lists only if they are still orphaned (not bound again, or bound but untouched for
    O(orphan_after) seconds) and still lists. RabbitMQ: a passive declare must show no consumer, then
    C(queue.delete) with C(if_unused) lets the broker itself refuse a queue a consumer attached to meanwhile; an
    exclusive queue (its owner is alive) is never deleted. What was found but kept is listed in RV(kept)."
  - "O(restore_overdue=true) (Redis) does what kombu's C(restore_visible) does for messages a worker took and never
    acknowledged, once their holder is gone (the V(overdue_unacked) finding: older than O(visibility_timeout) by
    C(unacked_index) and held by no answering worker): each message, marked redelivered, goes back at the head
    of the list of its priority step in every queue kombu routes it to, and leaves the C(unacked) hash and
    C(unacked_index), in one script per message that does nothing if the entry changed since it was read (a
    worker acknowledged or restored it meanwhile). A message no bound queue takes stays held (RV(not_restored))."
  - Check mode and diff mode say exactly what would go (names, reply counts, restored task ids); a second run
    changes nothing.
options:
  state:
    description:
      - V(cleaned) deletes the findings of O(kinds) (and restores, with O(restore_overdue)).
    type: str
    choices: [cleaned]
    default: cleaned
  kinds:
    description:
      - "The kinds of findings to delete: V(orphan_reply) (Redis and RabbitMQ), V(stale_event_queue) (RabbitMQ; Redis
        carries events over PUB/SUB and has no event queues)."
      - With O(restore_overdue), may be empty.
    type: list
    elements: str
    choices: [orphan_reply, stale_event_queue]
    default: []
  restore_overdue:
    description:
      - Redis. Put the V(overdue_unacked) messages back at the head of their queues (see the description). One
        broadcast finds which tasks the answering workers hold (see O(expected_nodes), O(timeout)).
      - On RabbitMQ it is refused, as RabbitMQ requeues what a consumer held as soon as its connection closes.
    type: bool
    default: false
  visibility_timeout:
    description:
      - Redis. The C(visibility_timeout) of kombu's Redis transport that the workers use (Celery's default 3600
        seconds). A held message older than this whose holder is gone is overdue.
    type: float
    default: 3600
  orphan_after:
    description:
      - Redis. A reply list still bound but untouched for this many seconds is orphaned (checked again right
        before it is deleted).
    type: float
    default: 60
  expected_nodes:
    description:
      - With O(restore_overdue), the workers that should answer the broadcast (names or patterns like C(*@host));
        it ends as soon as they all did.
    type: list
    elements: str
  expected_count:
    description:
      - How many workers should answer, as O(expected_nodes).
    type: int
  timeout:
    description:
      - Seconds to collect the workers' replies to the broadcast of O(restore_overdue).
    type: float
    default: 1.0
extends_documentation_fragment:
  - celeryops.fleet.broker
  - celeryops.fleet.redis_transport
  - celeryops.fleet.queue_options
  - celeryops.fleet.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The names of the targeted findings per kind (the ids of the overdue messages) before and after.
requirements:
  - redis (for a Redis broker) or pika (for RabbitMQ) where the module runs; not celery or kombu
author:
  - celeryops.fleet developers (@celeryops)
"""

EXAMPLES = r"""
- name: See which orphaned reply lists would go
  celeryops.fleet.celery_broker:
    broker_url: redis://127.0.0.1:6379/0
    kinds: [orphan_reply]
  check_mode: true
  diff: true

- name: Delete them, and restore the messages of workers that died holding them
  celeryops.fleet.celery_broker:
    broker_url: redis://127.0.0.1:6379/0
    kinds: [orphan_reply]
    restore_overdue: true
    visibility_timeout: 3600
    expected_nodes: [default@web1, default@web2]

- name: RabbitMQ, through the management API
  celeryops.fleet.celery_broker:
    broker_url: amqp://ops:{{ vault_rabbit_password }}@rabbit.internal:5672//
    management_url: http://rabbit.internal:15672
    kinds: [orphan_reply, stale_event_queue]
"""

RETURN = r"""
findings:
  description: The findings of O(kinds) (and V(overdue_unacked) with O(restore_overdue)) before the change, as
    M(celeryops.fleet.celery_broker_info) returns them.
  returned: always
  type: list
  elements: dict
cleaned:
  description: What was deleted (in check mode, would be), with C(kind), C(name), C(count) (replies or messages
    deleted; in check mode the count found, V(null) where Redis could not count without resetting the idle time)
    and C(bytes).
  returned: always
  type: list
  elements: dict
  sample: [{"kind": "orphan_reply", "name": "5c1b0a5e-4c8a-4a9c-8c43-7f4b2a1d9e10.reply.celery.pidbox", "count": 2,
            "bytes": 1456}]
kept:
  description: Findings not deleted because the re-check right before the delete said no (C(kind), C(name),
    C(reason)), such as a consumer that attached meanwhile.
  returned: always
  type: list
  elements: dict
restored:
  description: Redis. The overdue messages put back (in check mode, that would be), with C(id), C(queue) (where the
    finding counts it), C(queues) (every queue it went to), C(priority_step), C(delivery_tag) and C(held_seconds).
  returned: always
  type: list
  elements: dict
not_restored:
  description: Redis. Overdue messages left held, as RV(restored) with a C(reason).
  returned: always
  type: list
  elements: dict
nodes:
  description: With O(restore_overdue), the workers that answered the broadcast.
  returned: with O(restore_overdue)
  type: list
  elements: str
missing:
  description: With O(restore_overdue), expected nodes that did not answer.
  returned: with O(restore_overdue)
  type: list
  elements: str
broker:
  description: The broker that answered, without credentials.
  returned: always
  type: dict
diff:
  description: Names of the targeted findings per kind (C(overdue_unacked) the task ids), before and after.
  returned: in diff mode
  type: dict
  sample:
    before: {orphan_reply: [5c1b0a5e-4c8a-4a9c-8c43-7f4b2a1d9e10.reply.celery.pidbox], overdue_unacked: [0b1e6f4e-1f7c-4a53-9d0e-2c8e5b7a6d11]}
    after: {overdue_unacked: []}
"""

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import broker_from_params
from ansible_collections.celeryops.fleet.plugins.module_utils._control import check_node_names
from ansible_collections.celeryops.fleet.plugins.module_utils._hygiene import (
    broker_cleanup, check_cleanup_params, cleanup_argument_spec)
from ansible_collections.celeryops.fleet.plugins.module_utils._module import FleetModule


def main():
    module = FleetModule(argument_spec=cleanup_argument_spec(), queue_options=True)
    result = dict(changed=False, findings=[], cleaned=[], kept=[], restored=[], not_restored=[])
    with module.fail_on_error(result):
        check_cleanup_params(module.params)
        check_node_names(module.params['expected_nodes'], 'expected_nodes')
        broker = broker_from_params(module.params)
        result['broker'] = broker.facts()
        broker_cleanup(module.params, broker, module.check_mode, result)
    diff = result.pop('diff', None)
    if module._diff and diff is not None:
        result['diff'] = diff
    module.exit_json(**result)


if __name__ == '__main__':
    main()
