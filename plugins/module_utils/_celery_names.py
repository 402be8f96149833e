# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The names Celery and kombu give their own exchanges and queues, in one place (a leaf: imports nothing).

Celery's default ``control_exchange`` ('celery') names both remote-control exchanges; workers publish
events on ``celeryev``. Queues bound to them, and queues the broker named itself, are internals:
discovery leaves them out unless asked.

Private to celeryops.fleet; the API may change between releases.
"""

from __future__ import annotations

# Remote control: requests on a fanout exchange, replies through a direct one (kombu's pidbox).
PIDBOX_EXCHANGE = 'celery.pidbox'
REPLY_EXCHANGE = 'reply.celery.pidbox'
# Celery's control_queue_ttl and control_queue_expires (seconds) for a reply queue.
REPLY_QUEUE_TTL = 300.0
REPLY_QUEUE_EXPIRES = 10.0
# The event stream: a topic exchange on RabbitMQ, a fanout one (PUB/SUB) on Redis.
EVENT_EXCHANGE = 'celeryev'

INTERNAL_EXCHANGES = (PIDBOX_EXCHANGE, REPLY_EXCHANGE, EVENT_EXCHANGE)
# A worker's remote-control queue ends so; event receivers' queues start so; RabbitMQ names server-named
# queues so.
PIDBOX_QUEUE_SUFFIX = '.pidbox'
EVENT_QUEUE_PREFIX = EVENT_EXCHANGE + '.'
SERVER_NAMED_PREFIX = 'amq.gen-'


def is_internal_queue(name, exchange=None):
    """Queues of Celery's remote control, replies and event stream (and server-named ones)."""
    return (exchange in INTERNAL_EXCHANGES or name.endswith(PIDBOX_QUEUE_SUFFIX)
            or name.startswith(EVENT_QUEUE_PREFIX) or name.startswith(SERVER_NAMED_PREFIX))


def reply_queue(oid):
    """The reply queue of a remote-control client whose id is ``oid``, as kombu's Mailbox names it."""
    return '%s.%s' % (oid, REPLY_EXCHANGE)
