#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: celery_events_info
short_description: Listen to Celery's event stream for a while and summarise what the workers did
version_added: 0.1.0
description:
  - Listens on the broker's event exchange (C(celeryev)), as C(celery events) does, for O(duration) seconds or
    until O(max_events) events arrived, and returns what happened in that window. The Celery app is not needed.
  - Per event type (RV(counts)) and per task name (RV(tasks)) how many tasks were received, started, succeeded,
    failed, retried, rejected and revoked, with runtimes of the tasks that succeeded; each failed task with its
    exception (RV(failures)); and the workers heard from, with those that went offline during the window
    (RV(workers), RV(offline)).
  - Workers send task events only when started with C(-E) (or after C(enable_events)); heartbeats they send
    anyway. When no task events arrive the module says why in RV(hint) and as a warning, naming the workers that
    ran tasks without sending events. M(celeryops.fleet.celery_worker) with O(celeryops.fleet.celery_worker#module:events=true)
    turns them on.
  - On Redis it subscribes to the event channel, which leaves nothing behind. On RabbitMQ the queue it listens on is
    its own, deleted at the end whatever happens; should the module be killed, the queue is exclusive, auto-delete
    and expiring. Nothing else is changed.
  - The window always ends on time, even when no event comes. Once a second the module checks that the broker still
    answers, so a broker that stops answering fails it within O(connect_timeout) instead of passing for a quiet
    fleet.
options:
  duration:
    description:
      - Seconds to listen. The window ends after this long even when nothing arrives.
      - Workers send a heartbeat every 2 seconds, and are known to have gone offline only 2 heartbeat intervals after
        the last one, so a window of several seconds tells more about workers.
    type: float
    default: 10.0
  max_events:
    description:
      - End the window early once this many events (of O(types)) have arrived.
    type: int
  types:
    description:
      - Count only these event types. Worker heartbeats are still read to fill RV(workers).
      - All types when not set.
    type: list
    elements: str
    choices: [task-sent, task-received, task-started, task-succeeded, task-failed, task-retried, task-rejected,
              task-revoked, worker-online, worker-heartbeat, worker-offline]
  max_failures:
    description:
      - At most this many failed tasks in RV(failures), the newest first. RV(failures_total) counts them all.
    type: int
    default: 20
extends_documentation_fragment:
  - celeryops.fleet.broker
  - celeryops.fleet.redis_transport
  - celeryops.fleet.attributes
  - celeryops.fleet.attributes.info_module
requirements:
  - redis (for a Redis broker) or pika (for RabbitMQ) where the module runs; not celery or kombu
notes:
  - Only C(task-received) and C(task-sent) events carry the task name; a task received before the window started is
    counted under V(<unknown>).
author:
  - celeryops.fleet developers (@celeryops)
"""

EXAMPLES = r"""
- name: What failed in the last half minute?
  celeryops.fleet.celery_events_info:
    broker_url: redis://127.0.0.1:6379/0
    duration: 30
    types: [task-failed]
  register: window

- name: Fail the pipeline on any failed task
  ansible.builtin.assert:
    that: window.failures_total == 0
    fail_msg: "{{ window.failures | map(attribute='exception') | join('; ') }}"

- name: Runtimes of one task, over at most 500 events
  celeryops.fleet.celery_events_info:
    broker_url: "{{ broker_url }}"
    duration: 60
    max_events: 500
  register: window

- ansible.builtin.debug:
    msg: "p95 {{ window.tasks['proj.tasks.render'].runtime.p95 }} s"
"""

RETURN = r"""
counts:
  description: Per event type (such as C(task-failed) or C(worker-heartbeat)), how many arrived in the window.
  returned: always
  type: dict
  sample: {task-received: 12, task-started: 12, task-succeeded: 10, task-failed: 2, worker-heartbeat: 5}
events:
  description: Events counted in the window (those of O(types)).
  returned: always
  type: int
tasks:
  description:
    - Per task name, how many tasks were C(received), C(started), C(succeeded), C(failed), C(retried), C(rejected)
      and C(revoked), and C(runtime) (C(min), C(p50), C(p95), C(max) seconds) of those that succeeded, or V(null).
  returned: always
  type: dict
  sample:
    proj.tasks.render: {received: 3, started: 3, succeeded: 2, failed: 1, retried: 0, rejected: 0, revoked: 0,
                        runtime: {min: 0.12, p50: 0.2, p95: 0.2, max: 0.2}}
failures:
  description:
    - The failed tasks, newest first, at most O(max_failures). (Not named C(failed), which Ansible reads as the
      task's own failure.)
    - C(exception) is the exception as the worker printed it; C(traceback) the line of the traceback that places the
      failure (its innermost C(File ...) frame); C(timestamp) the worker's time of the failure (seconds since the
      epoch).
  returned: always
  type: list
  elements: dict
  sample:
    - uuid: 0ee6d058-86b2-4e01-bb1e-192b48e1b56e
      name: proj.tasks.charge
      exception: "CardDeclined('card declined')"
      traceback: 'File "/srv/proj/tasks.py", line 51, in charge'
      hostname: default@web1
      timestamp: 1716200000.5
failures_total:
  description: How many tasks failed in the window, including those left out of RV(failures).
  returned: always
  type: int
workers:
  description:
    - Per node name, the workers heard from in the window. C(online) is false for a worker that said goodbye
      (C(worker-offline)) or sent no heartbeat for 2 heartbeat intervals; C(offline_reason) says which.
    - C(last_heartbeat) (the worker's time, seconds since the epoch), C(seconds_since_heard), C(freq) (its
      heartbeat interval), C(active) (tasks running), C(processed) (tasks taken since it started), C(loadavg),
      C(sw_ver) come from its last heartbeat.
    - C(task_events) is true when it sent task events, false when it ran tasks without sending any (task events
      are off), and V(null) when the window cannot tell.
  returned: always
  type: dict
  sample:
    default@web1: {online: true, offline_reason: null, last_heartbeat: 1716200003.1, seconds_since_heard: 0.4,
                   freq: 2.0, active: 1, processed: 532, loadavg: [0.3, 0.2, 0.1], sw_ver: 5.4.0, task_events: true}
offline:
  description: Node names heard from in the window that had gone offline by its end.
  returned: always
  type: list
  elements: str
hint:
  description: Why no (task) events arrived, when the module can tell, such as workers running without C(-E); else V(null).
  returned: always
  type: str
undecodable:
  description:
    - Messages on the event exchange that were not JSON events (for example pickled ones), skipped; also events whose
      fields are not of the types Celery sends (such as a C(hostname) or C(uuid) that is not a string, or a
      C(timestamp) that is not a number). Anything that can publish on the exchange can send them.
  returned: always
  type: int
elapsed:
  description: Seconds the window lasted.
  returned: always
  type: float
ended:
  description:
    - What ended the window, V(duration) or V(max_events).
    - V(no_exchange) on RabbitMQ when the event exchange does not exist (no worker ever sent an event on the vhost),
      which ends it at once.
  returned: always
  type: str
broker:
  description:
    - The broker listened to, without credentials.
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

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import OptionError, broker_from_params, check_seconds
from ansible_collections.celeryops.fleet.plugins.module_utils._events import EVENT_TYPES, EventSummary, listen
from ansible_collections.celeryops.fleet.plugins.module_utils._module import FleetModule
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import redis_layout


def check_params(params):
    """What the argument spec cannot say; raises OptionError."""
    check_seconds(params['duration'], 'duration')
    if params['max_events'] is not None and params['max_events'] < 1:
        raise OptionError('max_events must be 1 or more, got %d' % params['max_events'], option='max_events')
    if params['max_failures'] < 0:
        raise OptionError('max_failures must be 0 or more, got %d' % params['max_failures'], option='max_failures')


def main():
    module = FleetModule(argument_spec=dict(
        duration=dict(type='float', default=10.0),
        max_events=dict(type='int'),
        types=dict(type='list', elements='str', choices=list(EVENT_TYPES)),
        max_failures=dict(type='int', default=20),
    ))
    result = dict(changed=False)
    params = module.params
    with module.fail_on_error(result):
        check_params(params)
        broker = broker_from_params(params)
        result['broker'] = broker.facts()
        summary = EventSummary(params['types'], params['max_failures'])
        elapsed, ended = listen(broker, summary, params['duration'], params['max_events'], params['types'],
                                redis_layout(params))
        result.update(summary.result(), elapsed=round(elapsed, 3), ended=ended)
    if result['hint']:
        module.warn(result['hint'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
