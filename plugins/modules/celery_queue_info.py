#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: celery_queue_info
short_description: Depth, unacked messages, consumers and contents of Celery queues on Redis or RabbitMQ
version_added: 0.1.0
description:
  - Reads the state of Celery queues straight from the broker, without the Celery app.
  - On Redis, counts every priority sub-queue of kombu's layout, and attributes the messages that workers hold
    unacknowledged to their queue.
  - On RabbitMQ, ready messages and consumers come from AMQP in real time; unacknowledged messages and queue
    discovery come from the management API when it can be reached.
  - Can wait until thresholds hold (a queue drained, consumers attached), so CI can gate on queue state.
  - Never changes anything, with one trace on RabbitMQ. O(peek) and O(breakdown) there receive messages without
    acknowledging them and give them back (requeue them). A classic queue puts them back in their places, with
    the C(redelivered) flag set. Celery looks at that flag only with C(worker_deduplicate_successful_tasks), to ask
    the result backend whether the task already succeeded before it runs it.
  - On RabbitMQ only classic queues are read. O(peek) and O(breakdown) refuse a quorum queue or a stream (see
    RV(queues[].type)), naming the queue, before any queue is read. RabbitMQ counts every requeue on a quorum
    queue as a delivery, so a message past its C(x-delivery-limit) would be dropped or dead-lettered (RabbitMQ
    4.0 to 4.2 set a limit of 20 by default). A requeued message also goes to the back of a quorum queue. A
    stream cannot take messages back at all.
  - The refusal does not depend on the management API. A read asks for a global QoS on its channel, and RabbitMQ
    refuses a consumer with one on any queue but a classic one, before it delivers anything. Without the
    management API, every queue to be read is first tried that way, with a consumer that takes at most one
    message (a classic queue gets it back in its place).
options:
  queues:
    description:
      - Names of the queues to describe.
      - When omitted, every Celery queue on the broker is described (on RabbitMQ this needs the management API).
    type: list
    elements: str
  include_internal:
    description:
      - With O(queues) omitted, also list Celery's and kombu's internal queues (remote control C(*.pidbox), replies,
        C(celeryev.*) event queues).
    type: bool
    default: false
  peek:
    description:
      - Decode the next N messages of each queue, in the order they would run. Headers only; a body is never
        unpickled.
    type: int
    default: 0
  peek_arguments:
    description:
      - With O(peek), also return each message's task arguments (C(argsrepr), C(kwargsrepr)). Arguments often hold
        personal data or secrets, and a result shown at C(-v) ends up in CI logs; V(false) leaves them out (the
        collection's playbooks do so unless asked).
    type: bool
    default: true
  breakdown:
    description:
      - Count the messages of each queue by task name, over the whole backlog.
    type: bool
    default: false
  priorities:
    description:
      - Redis only. Which queues get RV(queues[].priorities), their ready messages per priority step; the others
        have V(null) there, as on RabbitMQ.
      - V(used) gives it to a queue that holds messages on a priority step other than 0 (kombu's bare key). For
        any other queue, an empty one included, the map would only repeat RV(queues[].messages) under step
        C("0"), with zero under every other step.
      - V(all) gives it to every queue, zeros included.
      - V(auto) is V(all) for the queues named in O(queues), and V(used) when the queues are discovered (O(queues)
        omitted), where a broker of thousands of queues would otherwise return thousands of maps that say nothing
        more, and Ansible would scrub, encode and pass on every value of them.
    type: str
    choices: [auto, all, used]
    default: auto
  max_messages:
    description:
      - Threshold on ready messages per queue. With O(wait=true) the module waits until every queue has at most
        this many; otherwise it fails at once if one has more.
    type: int
  max_unacked:
    description:
      - Threshold on unacknowledged messages per queue, like O(max_messages).
    type: int
  min_consumers:
    description:
      - Threshold on consumers per queue, like O(max_messages) but a minimum.
      - RabbitMQ only; Redis cannot count consumers.
    type: int
extends_documentation_fragment:
  - celeryops.fleet.broker
  - celeryops.fleet.redis_transport
  - celeryops.fleet.queue_options
  - celeryops.fleet.wait
  - celeryops.fleet.attributes
  - celeryops.fleet.attributes.info_module
author:
  - celeryops.fleet developers (@celeryops)
"""

EXAMPLES = r"""
- name: Describe every Celery queue
  celeryops.fleet.celery_queue_info:
    broker_url: redis://127.0.0.1:6379/0
  register: queues

- name: Look at the next five tasks of a queue and what its backlog is made of
  celeryops.fleet.celery_queue_info:
    broker_url: "amqp://celery:{{ vault_broker_password }}@rabbit.internal:5672/prod"
    queues: [default]
    peek: 5
    breakdown: true

- name: Gate a deploy until the queue has drained (fails after ten minutes, naming the queue)
  celeryops.fleet.celery_queue_info:
    queues: [emails]
    max_messages: 0
    wait: true
    wait_timeout: 600
  environment:
    CELERY_BROKER_URL: "{{ broker_url }}"

- name: Set the broker once for every module of the collection
  module_defaults:
    group/celeryops.fleet.celery:
      broker_url: "{{ broker_url }}"
  block:
    - name: Wait until workers consume the queue
      celeryops.fleet.celery_queue_info:
        queues: [default]
        min_consumers: 1
        wait: true
"""

RETURN = r"""
queues:
  description: One entry per queue, in the order of O(queues) (sorted when discovered).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Queue name.
      type: str
      sample: default
    exists:
      description: Whether the broker knows the queue. A missing queue has zero counts.
      type: bool
    messages:
      description: Ready messages, summed over every priority sub-queue.
      type: int
      sample: 42
    unacked:
      description:
        - Messages delivered to workers and not yet acknowledged (prefetched or running).
        - V(null) on RabbitMQ when the management API cannot be reached.
      type: int
    consumers:
      description: Consumers attached (RabbitMQ). V(null) on Redis, which cannot tell.
      type: int
    priorities:
      description:
        - Redis only. Ready messages per priority step (keys are the steps as strings), every step included.
        - V(null) on RabbitMQ, and on Redis for a queue that O(priorities) leaves out. By default (V(auto)) that is
          a discovered queue with no message on a priority step other than 0, whose map would only say
          RV(queues[].messages) again under step C("0").
      type: dict
      sample: {"0": 40, "3": 0, "6": 2, "9": 0}
    source:
      description: What answered. V(redis), V(amqp) (passive declare only) or V(amqp+management).
      type: str
    type:
      description:
        - RabbitMQ only. The queue's type, from the management API. V(classic), V(quorum) or V(stream).
        - V(null) when the queue does not exist, or the management API could not be used
          (see RV(management_error)).
      returned: on RabbitMQ
      type: str
      sample: classic
    leader:
      description: RabbitMQ quorum queues. The node that leads the queue, from the management API.
      returned: for a quorum queue
      type: str
      sample: rabbit@mq2
    members:
      description: RabbitMQ quorum queues. The nodes that hold a replica of the queue.
      returned: for a quorum queue
      type: list
      elements: str
      sample: [rabbit@mq1, rabbit@mq2, rabbit@mq3]
    online:
      description: RabbitMQ quorum queues. The members that are up; fewer than a majority of RV(queues[].members)
        and the queue takes no message.
      returned: for a quorum queue
      type: list
      elements: str
      sample: [rabbit@mq1, rabbit@mq2]
    delivery_limit:
      description:
        - RabbitMQ quorum queues. How many times a message may be delivered before RabbitMQ drops or dead-letters
          it, as RabbitMQ applies it (the lower of the queue's C(x-delivery-limit) and its policy's
          C(delivery-limit)).
        - V(null) when neither sets one. RabbitMQ 3 then has no limit; RabbitMQ 4.0 to 4.2 apply 20.
      returned: for a quorum queue
      type: int
      sample: 20
    dead_letter:
      description:
        - RabbitMQ quorum queues. Where messages past RV(queues[].delivery_limit) (or rejected) go, C(exchange),
          C(routing_key) (V(null) keeps the message's own) and C(strategy), the queue's own C(x-dead-letter-*)
          arguments over its policy's.
        - V(null) when none is set, and such messages are dropped.
      returned: for a quorum queue
      type: dict
      sample: {exchange: dlx, routing_key: failed, strategy: at-most-once}
    peek:
      description:
        - The next O(peek) messages in the order they would run, decoded from their headers.
        - C(task) is V(<unknown>) for a message that names no task (a pickled protocol 1 message).
        - A message that cannot be decoded (not JSON, JSON nested deeper than 64 levels, headers that are not a
          dict, a task name that is not a string) has C(task) V(null) and C(error) saying why.
        - C(argsrepr) and C(kwargsrepr) only with O(peek_arguments=true).
      returned: when O(peek) > 0
      type: list
      elements: dict
      sample:
        - task: proj.tasks.add
          id: 5c1b0a5e-4c8a-4a9c-8c43-7f4b2a1d9e10
          argsrepr: (2, 3)
          kwargsrepr: "{}"
          eta: null
          expires: null
          retries: 0
          priority: 0
          origin: gen123@web1
    tasks:
      description:
        - Ready messages by task name, over the whole backlog.
        - Messages that name no task count under V(<unknown>); those that cannot be decoded are in RV(queues[].undecodable).
      returned: when O(breakdown=true)
      type: dict
      sample: {"proj.tasks.add": 40, "proj.tasks.mail": 2}
    undecodable:
      description:
        - Ready messages that cannot be decoded (not JSON, JSON nested deeper than 64 levels, headers that are not a
          dict, a task name that is not a string), over the whole backlog. They stay in the queue, and a purge by
          task names keeps them.
      returned: when O(breakdown=true)
      type: int
      sample: 0
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
management_error:
  description: RabbitMQ only. Why the management API could not be used, when it could not.
  returned: when the management API could not be used
  type: str
waited:
  description: Seconds spent waiting for the thresholds, with O(wait=true).
  returned: when O(wait=true)
  type: float
"""

from collections import namedtuple

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, OptionError
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import UNDECODABLE
from ansible_collections.celeryops.fleet.plugins.module_utils._module import FleetModule
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import (
    PRIORITIES_ALL, PRIORITIES_USED, check_queue_names, open_queues, queue_states, refuse_unsafe)
from ansible_collections.celeryops.fleet.plugins.module_utils._wait import check_wait_params, wait_in_result

MAX_PEEK = 10000
# A threshold that does not hold: the option that sets it, and a phrase for the operator.
Problem = namedtuple('Problem', 'option text')


def unmet_thresholds(states, params):
    """What keeps the thresholds from holding: a Problem per queue and threshold, in order."""
    problems = []
    for state in states:
        name = state['name']
        if params['max_messages'] is not None and state['messages'] > params['max_messages']:
            problems.append(Problem('max_messages', "queue '%s' has %d ready messages (max_messages %d)"
                                    % (name, state['messages'], params['max_messages'])))
        if params['max_unacked'] is not None and state['unacked'] is None:
            problems.append(Problem('max_unacked', "queue '%s' has an unknown number of unacked messages: the "
                                    "management API could not be used (max_unacked %d)" % (name, params['max_unacked'])))
        elif params['max_unacked'] is not None and state['unacked'] > params['max_unacked']:
            problems.append(Problem('max_unacked', "queue '%s' has %d unacked messages (max_unacked %d)"
                                    % (name, state['unacked'], params['max_unacked'])))
        if params['min_consumers'] is not None and (state['consumers'] or 0) < params['min_consumers']:
            problems.append(Problem('min_consumers', "queue '%s' has %d consumers (min_consumers %d)"
                                    % (name, state['consumers'] or 0, params['min_consumers'])))
    return problems


def check_params(params):
    """What the argument spec cannot say; raises OptionError."""
    check_wait_params(params)
    check_queue_names(params['queues'])
    if params['peek'] < 0 or params['peek'] > MAX_PEEK:
        raise OptionError('peek must be between 0 and %d, got %d' % (MAX_PEEK, params['peek']), option='peek')
    for option in ('max_messages', 'max_unacked', 'min_consumers'):
        if params[option] is not None and params[option] < 0:
            raise OptionError('%s must be 0 or more, got %d' % (option, params[option]), option=option)


def describe(params, result):
    queues = open_queues(params)
    result['broker'] = queues.broker.facts()
    try:
        if queues.transport == 'redis' and params['min_consumers'] is not None:
            raise OptionError('min_consumers: Redis cannot count consumers of a queue; use it with RabbitMQ, or check '
                              'workers with celeryops.fleet.celery_worker_info', option='min_consumers')
        names = params['queues'] or None  # None: discover them on every poll
        priorities = params['priorities']
        if priorities == 'auto':
            priorities = PRIORITIES_ALL if names else PRIORITIES_USED
        thresholds = any(params[o] is not None for o in ('max_messages', 'max_unacked', 'min_consumers'))

        def probe():
            states = queue_states(queues, names, params['include_internal'], priorities)
            return not unmet_thresholds(states, params), states

        if params['wait'] and thresholds:
            states = wait_in_result(result, probe, params, lambda s: '; '.join(p.text for p in unmet_thresholds(s, params)),
                                    lambda result, states: result.update(queues=states), reconnect=queues.reconnect)
        else:
            states = queue_states(queues, names, params['include_internal'], priorities)
        result['queues'] = states
        if queues.management_error:
            result['management_error'] = queues.management_error
        problems = unmet_thresholds(states, params)
        if problems:
            raise BrokerError('thresholds not met: ' + '; '.join(p.text for p in problems), option=problems[0].option)
        if params['peek'] or params['breakdown']:
            refuse_unsafe(queues, states, 'peek' if params['peek'] else 'breakdown')
        for state in states:
            if params['peek']:
                state['peek'] = queues.peek(state['name'], params['peek']) if state['exists'] else []
                if not params['peek_arguments']:
                    for message in state['peek']:
                        message.pop('argsrepr', None)
                        message.pop('kwargsrepr', None)
            if params['breakdown']:
                state['tasks'] = queues.breakdown(state['name']) if state['exists'] else {}
                state['undecodable'] = state['tasks'].pop(UNDECODABLE, 0)
    finally:
        queues.close()


def main():
    module = FleetModule(
        argument_spec=dict(
            queues=dict(type='list', elements='str'),
            include_internal=dict(type='bool', default=False),
            peek=dict(type='int', default=0),
            peek_arguments=dict(type='bool', default=True),
            breakdown=dict(type='bool', default=False),
            priorities=dict(type='str', choices=['auto', PRIORITIES_ALL, PRIORITIES_USED], default='auto'),
            max_messages=dict(type='int'),
            max_unacked=dict(type='int'),
            min_consumers=dict(type='int'),
        ),
        queue_options=True,
        wait_options=True,
    )
    result = dict(changed=False, queues=[])
    with module.fail_on_error(result):
        check_params(module.params)
        describe(module.params, result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
