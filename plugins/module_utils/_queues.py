# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One entry point for the queue modules: open the right broker and describe its queues."""

from __future__ import annotations

# BrokerError: what open_queues and the queue objects raise, for callers that import it from here.
from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (  # noqa: F401 pylint: disable=unused-import
    BrokerError, OptionError, broker_from_params, split_url)
from ansible_collections.celeryops.fleet.plugins.module_utils import _redis_queues


def redis_transport_argument_spec():
    """kombu's Redis transport options (doc fragment celeryops.fleet.redis_transport), taken by every module
    and plugin that talks to a broker: see redis_layout()."""
    return dict(
        global_keyprefix=dict(type='str', default='', no_log=False),
        sep=dict(type='str', default=_redis_queues.DEFAULT_SEP),
        priority_steps=dict(type='list', elements='int', default=list(_redis_queues.DEFAULT_PRIORITY_STEPS)),
    )


def redis_layout(params):
    """The RedisLayout of the options of redis_transport_argument_spec(), checked; raises OptionError."""
    steps = params.get('priority_steps')
    if steps is not None and (not steps or any(s < 0 or s > 255 for s in steps)):
        raise OptionError('priority_steps must be a non-empty list of numbers from 0 to 255, got %s' % steps,
                          option='priority_steps')
    if params.get('sep') == '':
        raise OptionError('sep must not be empty', option='sep')
    return _redis_queues.RedisLayout(params.get('global_keyprefix') or '', steps or _redis_queues.DEFAULT_PRIORITY_STEPS,
                                     params.get('sep') or _redis_queues.DEFAULT_SEP)


def queue_options_argument_spec():
    """Options of doc fragment celeryops.fleet.queue_options: the RabbitMQ management API."""
    return dict(
        management_url=dict(type='list', elements='str'),
        management_user=dict(type='str'),
        management_password=dict(type='str', no_log=True),
        management_validate_certs=dict(type='bool', default=True),
    )


def open_queues(params):
    """A RedisQueues or AmqpQueues for the module's options; raises OptionError or BrokerError."""
    broker = broker_from_params(params)
    layout = redis_layout(params)
    if params.get('management_url'):
        check_management_url(params['management_url'])
    if broker.transport == 'redis':
        return _redis_queues.RedisQueues(broker, layout)
    # Imported only for a RabbitMQ broker: pika is a good part of a Redis check's start-up time otherwise.
    from ansible_collections.celeryops.fleet.plugins.module_utils._amqp_queues import AmqpQueues
    return AmqpQueues(broker, open_management(params, broker))


def open_management(params, broker):
    """The management API the options name (queue_options_argument_spec) for a RabbitMQ ``broker``; raises
    OptionError naming management_url when a URL is malformed."""
    from ansible_collections.celeryops.fleet.plugins.module_utils._management import Management
    if params.get('management_url'):
        check_management_url(params['management_url'])
    return Management(broker, params.get('management_url'), params.get('management_user'),
                      params.get('management_password'), params.get('management_validate_certs', True))


def check_management_url(value):
    """Each URL of a management_url value (one, a list, or separated by commas) is an http(s) URL with a host and a
    valid port, or OptionError naming management_url. The value is not echoed: it may hold credentials."""
    from ansible_collections.celeryops.fleet.plugins.module_utils._management import management_urls
    for url in management_urls(value):
        try:
            parts = split_url(url.strip())
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise OptionError('management_url: malformed URL (a port from 1 to 65535; an IPv6 host in brackets)',
                              option='management_url')
        if parts.scheme.lower() not in ('http', 'https') or not parts.hostname:
            raise OptionError('management_url must be an http:// or https:// URL with a host, such as '
                              'http://rabbit.internal:15672 (the management API, not the AMQP URL)',
                              option='management_url')


def check_queue_names(names, option='queues', what='queue'):
    for name in names or []:
        if not name or not name.strip():
            raise OptionError('%s: a %s name is empty' % (option, what), option=option)


# Which queues get their map of ready messages per priority step on Redis (celery_queue_info's priorities option):
# every queue, or those holding messages on a step other than 0 (for any other the map only repeats `messages`).
PRIORITIES_ALL = 'all'
PRIORITIES_USED = 'used'


def queue_states(queues, names=None, include_internal=False, priorities=PRIORITIES_ALL):
    """Per queue: name, exists, messages (ready, all priority steps), unacked, consumers, priorities, source;
    on RabbitMQ also type (classic, quorum, stream; None when the management API does not say), and for a quorum
    queue leader, members, online, delivery_limit and dead_letter (AmqpQueues.quorum_facts).

    ``names`` None means every queue discovered on the broker, from the same reads.
    A queue that does not exist is ``exists: false`` with zero counts, not a failure.
    ``priorities``: PRIORITIES_ALL gives every Redis queue its map of ready messages per step; PRIORITIES_USED
    only a queue with messages on a step other than 0, the others None (as on RabbitMQ). Fewer values make a
    result of thousands of queues cheaper for Ansible to scrub of no_log values, encode and pass on.
    """
    states = []
    if queues.transport == 'redis':
        bindings = queues.bindings()
        if names is None:
            names = queues.discover(include_internal, bindings)
        bound = set(q for entries in bindings.values() for _rk, q in entries)
        depths = queues.depths(names)
        unacked = queues.unacked_by_queue(bindings)
        every_map = priorities == PRIORITIES_ALL
        for name in names:
            per_step = depths[name]
            messages = sum(per_step.values())
            used = every_map or any(n for step, n in per_step.items() if step)
            states.append(dict(name=name, exists=name in bound or messages > 0, messages=messages,
                               unacked=unacked.get(name, 0), consumers=None,
                               priorities=dict((str(step), n) for step, n in per_step.items()) if used else None,
                               source='redis'))
        return states
    if names is None:
        names = queues.discover(include_internal)
        unacked = queues.unacked(queues.management_records)
    else:
        unacked = queues.unacked()
    for name in names:
        exists, ready, consumers = queues.declare_passive(name)
        states.append(dict(name=name, exists=exists, messages=ready,
                           unacked=(unacked.get(name) or 0) if unacked is not None else None,
                           consumers=consumers, priorities=None,
                           source='amqp+management' if unacked is not None else 'amqp',
                           type=queues.queue_type(name) if exists else None, **queues.quorum_facts(name)))
    return states


def refuse_unsafe(queues, states, option):
    """Before anything is read or changed: refuse to read (``option``: peek, breakdown, task_names,
    state=trimmed) a RabbitMQ queue that a read would change, or to purge (``option`` None) one that
    cannot be purged. Every existing queue is checked, whatever its count: its type decides."""
    if queues.transport != 'amqp':
        return
    for state in states:
        if state['exists']:
            queues.refuse_unsafe(state['name'], state['type'], option)
