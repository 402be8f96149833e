#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: celery_queue
short_description: Purge or trim Celery queues on Redis or RabbitMQ, touching nothing else
version_added: 0.1.0
description:
  - Removes ready messages from named Celery queues, straight on the broker and without the Celery app.
  - O(state=purged) removes every ready message (every priority sub-queue on Redis), or with O(task_names) only
    the messages of those tasks, keeping the others in their order.
  - O(state=trimmed) cuts a backlog down to O(keep) messages.
  - Only the named queues change. Messages that workers hold unacknowledged are not removed (no purge can); they
    are reported in RV(queues[].unacked) and a warning.
  - Check mode says exactly how many messages would go; diff mode shows the counts before and after.
options:
  queues:
    description:
      - Names of the queues to change.
    type: list
    elements: str
    required: true
  state:
    description:
      - V(purged) removes ready messages.
      - V(trimmed) removes messages until at most O(keep) are left.
      - On RabbitMQ, O(state=trimmed) and O(task_names) read the queue, and only classic queues are read. A quorum
        queue or a stream is refused, naming the queue, before any queue is read or changed. RabbitMQ counts every
        requeue on a quorum queue as a delivery (a message past its C(x-delivery-limit) is dropped or dead-lettered)
        and moves requeued messages to its back; a stream cannot take messages back at all. The refusal holds
        without the management API, see M(celeryops.fleet.celery_queue_info).
      - A purge without O(task_names) works on classic and quorum queues. A stream cannot be purged (its retention
        removes messages), and is refused.
    type: str
    choices: [purged, trimmed]
    default: purged
  task_names:
    description:
      - With O(state=purged), remove only the messages of these tasks (names as in the C(task) header, for example
        C(proj.tasks.add)). The other messages stay; on Redis in their order.
      - A filtered purge reads the whole backlog, and on RabbitMQ receives and requeues the messages it keeps, which
        go back in their places with the C(redelivered) flag set.
      - On Redis it writes the messages it keeps to a key of its own, C(_celeryops.filter.<random>) after
        O(global_keyprefix), which expires should the module die, then renames it over the queue; a Redis ACL
        user needs access to such keys.
      - An empty list is refused (an empty variable would otherwise widen the purge to every message); omit
        O(task_names) to purge every message.
    type: list
    elements: str
  keep:
    description:
      - With O(state=trimmed), how many messages to leave in each queue.
    type: int
  drop:
    description:
      - With O(state=trimmed), which end of the backlog goes, in the order messages would run.
      - V(oldest) drops the messages that would run next; V(newest) the ones that would run last.
      - On Redis the run order is priority step by step, lowest first; on RabbitMQ the queue's delivery order.
    type: str
    choices: [oldest, newest]
    default: oldest
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
author:
  - celeryops.fleet developers (@celeryops)
"""

EXAMPLES = r"""
- name: See what a purge would remove
  celeryops.fleet.celery_queue:
    broker_url: redis://127.0.0.1:6379/0
    queues: [reports]
  check_mode: true
  diff: true
  register: would

- name: Purge the queue
  celeryops.fleet.celery_queue:
    broker_url: redis://127.0.0.1:6379/0
    queues: [reports]
    state: purged

- name: Drop only one task's messages, keep the rest in order
  celeryops.fleet.celery_queue:
    broker_url: "amqp://celery:{{ vault_broker_password }}@rabbit.internal:5672/prod"
    queues: [default]
    task_names: [proj.tasks.rebuild_thumbnails]

- name: Keep the 1000 most recent messages of a runaway queue
  celeryops.fleet.celery_queue:
    queues: [metrics]
    state: trimmed
    keep: 1000
    drop: oldest
"""

RETURN = r"""
queues:
  description: One entry per queue, in the order of O(queues).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Queue name.
      type: str
    exists:
      description: Whether the queue exists on the broker.
      type: bool
    before:
      description: Ready messages before.
      type: int
    removed:
      description: Messages removed (in check mode, that would be removed).
      type: int
      sample: 120
    after:
      description: Ready messages after (in check mode, RV(queues[].before) minus RV(queues[].removed)).
      type: int
    unacked:
      description: Messages held unacknowledged by workers, which no purge removes. V(null) when the broker cannot tell.
      type: int
    type:
      description:
        - RabbitMQ only. The queue's type, from the management API. V(classic), V(quorum) or V(stream).
        - V(null) when the queue does not exist, or the management API could not be used.
      returned: on RabbitMQ
      type: str
      sample: quorum
pending:
  description:
    - When the broker failed part way (connection lost, restarted), the queues not done, in the order of O(queues).
      RV(queues) lists those that were done; the message names both, and the queue that was in progress, which may
      be partly or wholly done.
  returned: on failure after the broker answered
  type: list
  elements: str
  sample: ["reports", "mail"]
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
  description: Ready messages per queue before and after.
  returned: in diff mode
  type: dict
  sample: {"before": {"reports": 120}, "after": {"reports": 0}}
"""

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, OptionError, Refused
from ansible_collections.celeryops.fleet.plugins.module_utils._module import FleetModule
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import (
    check_queue_names, open_queues, queue_states, refuse_unsafe)

# Checked by Ansible, worded by the harness: 'keep is required with state: trimmed'.
REQUIRED_IF = [('state', 'trimmed', ['keep'])]


def check_params(params):
    """What the argument spec cannot say; raises OptionError."""
    check_queue_names(params['queues'])
    if not params['queues']:
        raise OptionError('queues must name at least one queue', option='queues')
    if params['state'] == 'trimmed':
        if params['keep'] < 0:   # given: REQUIRED_IF
            raise OptionError('keep must be 0 or more, got %d' % params['keep'], option='keep')
        if params['task_names']:
            raise OptionError('task_names only goes with state: purged', option='task_names')
    elif params['keep'] is not None:
        raise OptionError('keep only goes with state: trimmed, not state: %s' % params['state'], option='keep')
    # An empty variable must not widen a filtered purge to every message.
    if params['state'] == 'purged' and params['task_names'] == []:
        raise OptionError('task_names is an empty list: it names no task, so nothing would be kept; omit task_names '
                          'to purge every message', option='task_names')
    check_queue_names(params['task_names'], option='task_names', what='task')


def apply(params, check_mode, result, warn):
    queues = open_queues(params)
    result['broker'] = queues.broker.facts()
    current = []   # the queue being changed, while it is
    try:
        changes(queues, params, check_mode, result, warn, current)
    except BrokerError as error:
        if not check_mode and not isinstance(error, Refused):
            # The broker failed part way (lost, restarted): say what is done and what is not.
            done = [q['name'] for q in result['queues']]
            result['pending'] = [name for name in dict.fromkeys(params['queues']) if name not in done]
            error.msg += '; %s before the failure: %s' % (params['state'], ', '.join(done) or 'none')
            if result['pending']:
                error.msg += '; not done: %s' % ', '.join(result['pending'])
            if current:
                error.msg += " ('%s' was in progress: some or all of its messages may be gone)" % current[0]
        raise
    finally:
        queues.close()
    result['changed'] = any(q['removed'] for q in result['queues'])


def changes(queues, params, check_mode, result, warn, current):
    """Purge or trim each queue in turn, appending each finished one to result['queues']."""
    states = queue_states(queues, params['queues'])
    if params['state'] == 'trimmed':
        refuse_unsafe(queues, states, 'state=trimmed')
    else:
        refuse_unsafe(queues, states, 'task_names' if params['task_names'] else None)
    for state in states:
        name = state['name']
        current[:] = [name]
        if not state['exists'] or not state['messages']:
            removed = 0
        elif params['state'] == 'trimmed':
            removed = queues.trim(name, params['keep'], params['drop'], check_mode=check_mode)
        else:
            removed = queues.purge(name, params['task_names'], check_mode=check_mode)
        after = state['messages'] - removed
        if not check_mode and removed:
            after = queues.ready(name)
        done = dict(name=name, exists=state['exists'], before=state['messages'], removed=removed, after=after,
                    unacked=state['unacked'])
        if 'type' in state:  # RabbitMQ
            done['type'] = state['type']
        result['queues'].append(done)
        current[:] = []
        if state['unacked']:
            warn("queue '%s' has %d messages held unacknowledged by workers; they were not removed and will run"
                 % (name, state['unacked']))


def main():
    module = FleetModule(
        argument_spec=dict(
            queues=dict(type='list', elements='str', required=True),
            state=dict(type='str', default='purged', choices=['purged', 'trimmed']),
            task_names=dict(type='list', elements='str'),
            keep=dict(type='int', no_log=False),
            drop=dict(type='str', default='oldest', choices=['oldest', 'newest']),
        ),
        queue_options=True,
        required_if=REQUIRED_IF,
    )
    result = dict(changed=False, queues=[])
    with module.fail_on_error(result):
        check_params(module.params)
        apply(module.params, module.check_mode, result, module.warn)
    if module._diff:
        result['diff'] = dict(before=dict((q['name'], q['before']) for q in result['queues']),
                              after=dict((q['name'], q['after']) for q in result['queues']))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
