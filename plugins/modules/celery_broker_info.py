#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: celery_broker_info
short_description: Is the broker healthy for Celery? Orphaned replies, stale event queues, overdue and duplicate messages
version_added: 0.2.0
description:
  - Finds what on a Redis or RabbitMQ broker loses, repeats or piles up Celery's messages, and returns each as a
    finding C({kind, name, count, bytes, oldest_seconds, detail}) with RV(summary) counting the findings per kind.
  - Never changes anything. Every read is bounded; on Redis keys are found with C(SCAN) (a C(COUNT) per step),
    kombu's C(unacked) hash is read with C(HSCAN), lists in chunks; never C(KEYS) or a whole C(HGETALL).
  - "On Redis, one broadcast asks every worker for C(active_queues), C(active), C(reserved) and C(scheduled): the
    queues consumed and the tasks held (see O(expected_nodes), O(timeout))."
  - "On RabbitMQ the queues, consumers and node alarms come from the management API (see O(management_url); its
    statistics lag up to about 5 seconds), and one broadcast asks every worker for C(scheduled). No queue is read."
  - "The kinds, what each means, and the safe action:"
  - "V(orphan_reply) (Redis, RabbitMQ): a remote-control reply list C(<id>.reply.celery.pidbox) nobody reads, left
    by a C(celery inspect) (or Flower) that died or gave up before the replies came. Redis never expires it. On
    Redis it is one whose binding in C(_kombu.binding.reply.celery.pidbox) is gone, or that no command touched
    for O(orphan_after) seconds (C(OBJECT IDLETIME): a live client pops its replies within its timeout);
    C(oldest_seconds) is that idle time (replies carry no timestamp), C(count) the replies, C(bytes) C(MEMORY USAGE).
    Under an LFU C(maxmemory-policy) Redis keeps no idle time and only unbound lists are found. On RabbitMQ: a
    reply queue with no consumer. Safe action: delete it."
  - "V(stale_event_queue) (RabbitMQ): a C(celeryev.*) queue with no consumer (a monitor that died): events fill
    the broker's memory. Safe action: delete it."
  - "V(no_consumer): a queue with ready messages that nobody consumes (Redis: no answering worker lists it in
    C(active_queues); RabbitMQ: zero consumers). Safe action: start or point a worker at it, or purge it if it is
    obsolete."
  - "V(overdue_unacked) (Redis): messages in kombu's C(unacked) hash for longer than O(visibility_timeout)
    (by C(unacked_index)) whose task no answering worker reports (active, reserved, scheduled): their worker is
    gone. They run late (when a live worker restores them) or never. One finding per queue, C(oldest_seconds)
    the oldest. Safe action: start a worker on the queue (kombu restores them), or restore them."
  - "V(eta_beyond_visibility): on Redis, messages (ready or held) whose ETA is more than O(visibility_timeout)
    ahead: the worker that takes one holds it unacknowledged, kombu redelivers it to another worker after the
    visibility timeout, and it runs twice. On RabbitMQ, tasks the answering workers hold as C(scheduled) whose ETA
    is further out than the consumer timeout of their queue (O(consumer_timeout), or the queue's
    C(x-consumer-timeout) argument or C(consumer-timeout) policy when the management API shows them): RabbitMQ
    closes the worker's channel and redelivers everything it held. One finding per queue. Safe action: raise the
    transport's C(visibility_timeout) (Redis) or C(consumer_timeout) (RabbitMQ) above the longest countdown, or
    schedule far-off work with beat."
  - "V(duplicate_task_id) (Redis): the same task id more than once across the ready messages read and the
    C(unacked) hash (a producer that republishes). One finding per id. Safe action: find the producer; revoke
    the id if it must run once."
  - "V(result_without_ttl) (Redis, with O(result_backend) or O(result_backend_broker)): C(celery-task-meta-*) keys
    without expiry (C(result_expires) 0 or None), among up to O(result_sample) keys (SCAN order); C(bytes) from
    C(MEMORY USAGE); C(detail) says whether every key was scanned. Safe action: set C(result_expires)."
  - "V(eviction_policy) (Redis): C(maxmemory-policy) other than C(noeviction): under memory pressure Redis deletes
    queues and messages. Safe action: C(noeviction)."
  - "V(memory_near_limit) (Redis): C(used_memory) at least O(memory_ratio) of C(maxmemory). Safe action: raise
    C(maxmemory), drain backlogs, expire results."
  - "V(persistence_off) (Redis): no RDB save points and C(appendonly no): a restart loses every queue. Safe
    action: enable C(appendonly)."
  - "V(memory_alarm), V(disk_alarm) (RabbitMQ): a node over its memory watermark or under its free disk limit;
    every publisher is blocked. Safe action: drain queues (stale event queues first), free disk."
  - "V(non_durable_queue) (RabbitMQ): a task queue that is not durable, lost with its messages on a restart. Safe
    action: declare it durable."
  - "Not checked on RabbitMQ: V(duplicate_task_id) (reading a RabbitMQ queue means receiving its messages), ready
    messages for V(eta_beyond_visibility) (only held ones can outlast the consumer timeout)."
options:
  visibility_timeout:
    description:
      - Redis. The C(visibility_timeout) of kombu's Redis transport that the workers use (Celery's default 3600
        seconds), for V(overdue_unacked) and V(eta_beyond_visibility).
    type: float
    default: 3600
  consumer_timeout:
    description:
      - RabbitMQ. The broker's C(consumer_timeout) in seconds (RabbitMQ's default 1800), for V(eta_beyond_visibility);
        the management API does not show it. A queue's C(x-consumer-timeout) argument or C(consumer-timeout) policy
        wins when the API shows it.
    type: float
    default: 1800
  orphan_after:
    description:
      - Redis. A reply list still bound but untouched for this many seconds is V(orphan_reply).
    type: float
    default: 60
  max_findings:
    description:
      - Threshold per kind (kind -> number of findings, as counted in RV(summary)). With O(wait=true) the module polls
        until every kind is at or under its number; otherwise it fails at once when one is over.
    type: dict
  result_backend:
    description:
      - Redis. A Redis result backend URL (V(redis://host:6379/1)) to check for V(result_without_ttl). The TLS
        options of the broker apply to it too.
    type: str
  result_backend_broker:
    description:
      - Redis. Check the broker's own Redis database for V(result_without_ttl) (the result backend is the broker).
    type: bool
    default: false
  result_sample:
    description:
      - Redis. Result keys looked at, at most (their TTL and memory, in batches).
    type: int
    default: 10000
  message_sample:
    description:
      - Redis. Ready messages read per queue, at most, in run order, for V(eta_beyond_visibility) and
        V(duplicate_task_id); RV(sampled) names the queues that held more.
    type: int
    default: 10000
  memory_ratio:
    description:
      - Redis. V(memory_near_limit) from this fraction of C(maxmemory) on.
    type: float
    default: 0.9
  expected_nodes:
    description:
      - The workers that should answer the broadcast (names or patterns like C(*@host)); the broadcast ends as
        soon as they all did, and RV(missing) lists those that did not.
    type: list
    elements: str
  expected_count:
    description:
      - How many workers should answer, as O(expected_nodes).
    type: int
  timeout:
    description:
      - Seconds to collect the workers' replies to the broadcast (all of it unless O(expected_nodes) or
        O(expected_count) are met earlier).
    type: float
    default: 1.0
extends_documentation_fragment:
  - celeryops.fleet.broker
  - celeryops.fleet.redis_transport
  - celeryops.fleet.queue_options
  - celeryops.fleet.wait
  - celeryops.fleet.attributes
  - celeryops.fleet.attributes.info_module
requirements:
  - redis (for a Redis broker) or pika (for RabbitMQ) where the module runs; not celery or kombu
author:
  - celeryops.fleet developers (@celeryops)
"""

EXAMPLES = r"""
- name: Is the broker healthy for Celery?
  celeryops.fleet.celery_broker_info:
    broker_url: redis://127.0.0.1:6379/0
    result_backend: redis://127.0.0.1:6379/1
    expected_nodes: [default@web1, default@web2]
  register: hygiene

- name: Fail on lost-message settings and on messages that would run twice
  celeryops.fleet.celery_broker_info:
    broker_url: "{{ broker_url }}"
    visibility_timeout: 7200
    max_findings: {eviction_policy: 0, overdue_unacked: 0, eta_beyond_visibility: 0}

- name: RabbitMQ, through the management API
  celeryops.fleet.celery_broker_info:
    broker_url: amqp://ops:{{ vault_rabbit_password }}@rabbit.internal:5672//
    management_url: http://rabbit.internal:15672
    max_findings: {stale_event_queue: 0, memory_alarm: 0}
"""

RETURN = r"""
findings:
  description: What was found, by kind (in the order of the module's description), then by name.
  returned: always
  type: list
  elements: dict
  contains:
    kind:
      description: The kind (see the description for each one's meaning and safe action).
      type: str
    name:
      description: The queue, reply queue, task id, node or setting the finding is about.
      type: str
    count:
      description: Messages, replies, keys or occurrences concerned (V(null) for a setting).
      type: int
    bytes:
      description: Their size where known (Redis C(MEMORY USAGE) or message length; RabbitMQ queue memory).
      type: int
    oldest_seconds:
      description: Age of the oldest concerned where known (idle time of a reply list, time held for unacked).
      type: float
    detail:
      description: One line for a human.
      type: str
  sample:
    - {"kind": "orphan_reply", "name": "5c1b0a5e-4c8a-4a9c-8c43-7f4b2a1d9e10.reply.celery.pidbox", "count": 2,
       "bytes": 1456, "oldest_seconds": 8113, "detail": "2 replies nobody reads; still bound, untouched for 8113s"}
summary:
  description: Number of findings per kind, every kind checked on this broker included (0 when none).
  returned: always
  type: dict
  sample: {"orphan_reply": 1, "no_consumer": 0, "overdue_unacked": 0}
checked:
  description: The kinds checked on this broker.
  returned: always
  type: list
  elements: str
nodes:
  description: The workers that answered the broadcast.
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
sampled:
  description: Redis. Queues of which only O(message_sample) ready messages were read -> messages read.
  returned: when a queue held more ready messages than O(message_sample)
  type: dict
results_sampled:
  description: Redis. Result keys looked at.
  returned: with O(result_backend) or O(result_backend_broker)
  type: int
settings_error:
  description: Redis. Why the settings could not be read (C(CONFIG) refused by an ACL or renamed); not a finding.
  returned: when C(CONFIG GET) failed
  type: str
nodes_error:
  description: RabbitMQ. Why the nodes (alarms) could not be read (the management user lacks the monitoring tag).
  returned: when C(/api/nodes) failed
  type: str
broadcast_error:
  description:
    - RabbitMQ. Why the workers could not be asked (for C(eta_beyond_visibility)) while a node is in alarm. An alarm
      blocks every publisher of the cluster, this module's broadcast too; the alarm findings are reported, and
      RV(nodes) and RV(missing) are empty.
  returned: when a C(memory_alarm) or C(disk_alarm) is found and the broadcast could not be sent
  type: str
waited:
  description: Seconds spent waiting for O(max_findings), with O(wait=true).
  returned: when O(wait=true) and O(max_findings)
  type: float
broker:
  description: The broker that answered, without credentials.
  returned: always
  type: dict
"""

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import broker_from_params
from ansible_collections.celeryops.fleet.plugins.module_utils._control import check_node_names
from ansible_collections.celeryops.fleet.plugins.module_utils._hygiene import (
    broker_info, check_hygiene_params, hygiene_argument_spec)
from ansible_collections.celeryops.fleet.plugins.module_utils._module import FleetModule
from ansible_collections.celeryops.fleet.plugins.module_utils._tasks import backend_broker
from ansible_collections.celeryops.fleet.plugins.module_utils._wait import check_wait_params


def check_params(params):
    check_wait_params(params)
    check_hygiene_params(params)
    check_node_names(params['expected_nodes'], 'expected_nodes')
    backend_broker(params)


def main():
    module = FleetModule(argument_spec=hygiene_argument_spec(), queue_options=True, wait_options=True,
                         mutually_exclusive=[('result_backend', 'result_backend_broker')])
    result = dict(changed=False, findings=[], summary={}, nodes=[], missing=[], duplicates=[])
    with module.fail_on_error(result):
        check_params(module.params)
        broker = broker_from_params(module.params)
        result['broker'] = broker.facts()
        broker_info(module.params, broker, result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
