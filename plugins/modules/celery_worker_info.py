#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: celery_worker_info
short_description: Which Celery workers are online, and what they are doing, without waiting out timeouts
version_added: 0.1.0
description:
  - Asks the workers through Celery's remote control (what C(celery status) and C(celery inspect) do), with only
    the broker URL. The Celery app is not needed.
  - Every section in O(include) is asked for at once, and the replies come back on one connection. When the
    expected workers are named (O(expected_nodes)) or counted (O(expected_count)), the module returns as soon as
    all of them have answered, instead of waiting out O(timeout).
  - Reports the workers that did not answer (RV(missing)), those that answered but were not expected
    (RV(unexpected)) and names that more than one worker uses (RV(duplicates)). Workers that do not answer are
    data, not a failure; a broker that cannot be reached is a failure.
  - With O(wait=true) it asks again until every expected worker answers (for example right after a restart), for
    up to O(wait_timeout) seconds, then fails naming the workers that did not; this needs O(expected_nodes) or
    O(expected_count).
  - Never changes anything.
options:
  expected_nodes:
    description:
      - Node names of the workers that should answer, like V(worker1@web1). Glob patterns such as V(*@web1) are
        allowed.
      - The module returns as soon as every named node answered. A pattern cannot tell when all of its nodes have
        answered; with patterns, give O(expected_count) too, or the whole O(timeout) is used.
    type: list
    elements: str
  expected_count:
    description:
      - How many workers should answer. The module returns as soon as that many have.
    type: int
  include:
    description:
      - Which sections to ask for. V(ping) is always asked.
    type: list
    elements: str
    choices: [ping, stats, active, reserved, scheduled, registered, active_queues, revoked, conf, memdump]
    default: [ping, stats, active_queues]
  timeout:
    description:
      - Seconds to collect replies, in all (not a gap between replies). Workers that have not answered by then are
        RV(missing).
      - On RabbitMQ, a memory or disk alarm blocks the connection that publishes the question; the module then fails
        when this time is out, saying that the broker blocked the connection, instead of reporting the workers
        missing.
    type: float
    default: 1.0
extends_documentation_fragment:
  - celeryops.fleet.broker
  - celeryops.fleet.redis_transport
  - celeryops.fleet.wait
  - celeryops.fleet.attributes
  - celeryops.fleet.attributes.info_module
requirements:
  - redis (for a Redis broker) or pika (for RabbitMQ) where the module runs; not celery or kombu
author:
  - celeryops.fleet developers (@celeryops)
"""

EXAMPLES = r"""
- name: Are the expected workers up? (returns as soon as both answered)
  celeryops.fleet.celery_worker_info:
    broker_url: redis://127.0.0.1:6379/0
    expected_nodes: [default@web1, reports@web2]
  register: fleet

- name: Fail the play when a worker is missing
  ansible.builtin.assert:
    that: fleet.missing | length == 0
    fail_msg: "missing workers: {{ fleet.missing | join(', ') }}"

- name: What every worker is running and holding
  celeryops.fleet.celery_worker_info:
    broker_url: "{{ broker_url }}"
    expected_count: 12
    include: [active, reserved, scheduled, stats]
    timeout: 3

- name: Wait until a restarted worker is back
  celeryops.fleet.celery_worker_info:
    broker_url: "{{ broker_url }}"
    expected_nodes: ["default@{{ inventory_hostname }}"]
    wait: true
    wait_timeout: 60
"""

RETURN = r"""
workers:
  description:
    - Per node name, the sections asked for, as Celery gives them (C(stats) has C(pid), C(uptime), C(pool),
      C(prefetch_count), C(total), C(rusage), C(broker) without password; C(active), C(reserved) and C(scheduled)
      are lists of tasks). Secrets in C(conf) and in URLs are masked.
    - C(queues) lists the names of the queues the node consumes, when C(active_queues) was asked for.
  returned: always
  type: dict
  sample:
    default@web1:
      ping: {ok: pong}
      stats: {pid: 4242, uptime: 3600, prefetch_count: 8, pool: {max-concurrency: 2, processes: [4243, 4244]}}
      active_queues: [{name: default, routing_key: default}]
      queues: [default]
online:
  description: Node names that answered, sorted.
  returned: always
  type: list
  elements: str
missing:
  description: Expected node names (and patterns) that no worker answered for.
  returned: always
  type: list
  elements: str
unexpected:
  description: Nodes that answered but are not in O(expected_nodes).
  returned: always
  type: list
  elements: str
duplicates:
  description: Node names that more than one worker answered for. Two workers must not share a name.
  returned: always
  type: list
  elements: str
count:
  description: Number of node names that answered.
  returned: always
  type: int
undecodable:
  description:
    - Replies skipped because they could not be read, over every request of the run (the waits of O(wait=true)
      included) - not JSON, not a kombu message, or not shaped as Celery shapes that reply (such as C(stats) that
      is not a dict, or C(active) that is not a list). Anything that can publish to the reply exchange can send them;
      the other workers' replies still count.
  returned: always
  type: int
  sample: 0
elapsed:
  description: Seconds spent collecting the last replies.
  returned: always
  type: float
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

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (
    OptionError, broker_from_params, check_seconds, redact_secrets)
from ansible_collections.celeryops.fleet.plugins.module_utils._control import (
    INSPECT_COMMANDS, Control, Expectation, check_node_names)
from ansible_collections.celeryops.fleet.plugins.module_utils._module import FleetModule
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import redis_layout
from ansible_collections.celeryops.fleet.plugins.module_utils._wait import check_wait_params, wait_until
from ansible_collections.celeryops.fleet.plugins.module_utils._workers import node_state


def check_params(params):
    """What the argument spec cannot say; raises OptionError."""
    check_wait_params(params)
    check_node_names(params['expected_nodes'], 'expected_nodes')
    if params['expected_count'] is not None and params['expected_count'] < 0:
        raise OptionError('expected_count must be 0 or more, got %d' % params['expected_count'], option='expected_count')
    check_seconds(params['timeout'], 'timeout')
    # Not a required_if: an empty list or a count of 0 is given, to Ansible, and leaves nothing to wait for too.
    if params['wait'] and not (params['expected_nodes'] or params['expected_count']):
        raise OptionError('wait needs expected_nodes or expected_count: there is nothing to wait for', option='wait')


def gather(params, result):
    broker = broker_from_params(params)
    result['broker'] = broker.facts()
    expectation = Expectation(params['expected_nodes'], params['expected_count'])
    control = Control(broker, redis_layout(params))
    try:
        if params['wait']:
            def probe():
                nodes = control.request({'ping': {}}, expectation, timeout=params['timeout']).nodes()
                return expectation.met_by(nodes), nodes

            def describe(nodes):
                return 'workers not answering: %s' % ', '.join(expectation.missing(nodes) or ['(too few answered)'])
            wait_until(probe, params['wait_timeout'], params['wait_sleep'], describe, reconnect=control.reconnect)
        sections = ['ping'] + [s for s in params['include'] if s != 'ping']
        replies = control.request(dict((s, INSPECT_COMMANDS[s]) for s in sections), expectation,
                                  timeout=params['timeout'])
    finally:
        control.close()

    online = replies.nodes('ping')
    workers = {}
    for section in sections:
        for node, value in replies.first(section).items():
            workers.setdefault(node, {})[section] = redact_secrets(value, broker.password)
    for node, info in workers.items():
        if 'active_queues' in info:
            info['queues'] = redact_secrets(node_state(replies, node)['queues'], broker.password)
    result.update(workers=workers, online=sorted(online), missing=expectation.missing(online),
                  unexpected=expectation.unexpected(online), duplicates=replies.duplicates(), count=len(online),
                  undecodable=control.undecodable, elapsed=round(replies.elapsed, 3))


def main():
    module = FleetModule(argument_spec=dict(
        expected_nodes=dict(type='list', elements='str'),
        expected_count=dict(type='int'),
        include=dict(type='list', elements='str', choices=sorted(INSPECT_COMMANDS),
                     default=['ping', 'stats', 'active_queues']),
        timeout=dict(type='float', default=1.0),
    ), wait_options=True)
    result = dict(changed=False, workers={}, online=[], missing=[], unexpected=[], duplicates=[], count=0, undecodable=0)
    with module.fail_on_error(result):
        check_params(module.params)
        gather(module.params, result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
