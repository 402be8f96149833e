# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Celery's event stream without the user's app: listen for a window and summarise it.

Workers publish events on the ``celeryev`` exchange: a topic exchange on RabbitMQ, a fanout
one on Redis, as Celery's own ``get_exchange`` decides, which kombu turns into PUB/SUB on the
channel ``/<db>.celeryev/<routing key>``. On Redis a pattern subscription reads them and
leaves nothing behind; on RabbitMQ a queue of our own is bound for the window, as
``celery events`` does, exclusive, auto-delete and expiring, and deleted at the end. Both
are spoken over the connection layer (redis-py, pika), without kombu.

Task events of a prefork worker arrive in batches (routing key ``task.multi``, a list body),
so task types are filtered here, not by the binding. Only ``task-received`` (and
``task-sent``) carry the task name; the other events are named through their uuid.

Anything that can publish on the exchange is heard: an event that is not JSON, not a dict, or
whose fields the summary reads have other types than Celery's is counted as undecodable.
"""

from __future__ import annotations

import math
import signal
import time
import uuid

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError
from ansible_collections.celeryops.fleet.plugins.module_utils._celery_names import EVENT_EXCHANGE, EVENT_QUEUE_PREFIX
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import (
    NotAnEnvelope, UNKNOWN_TASK, json_body, load_envelope)

# Our event queue on RabbitMQ: an event receiver's name, as Celery's own start.
QUEUE_PREFIX = EVENT_QUEUE_PREFIX + 'celeryops-fleet.'
# Celery's event_queue_expires and a message TTL well past any backlog a live listener keeps.
QUEUE_EXPIRES = 60.0
MESSAGE_TTL = 60.0
# Shown in Redis CLIENT LIST, so an operator can tell this listener from the workers.
CLIENT_NAME = 'celeryops.fleet.events'
# Seconds between two round trips that prove the broker still answers: a silent window is
# normal, so silence alone cannot tell a hung broker from an idle fleet.
ALIVE_EVERY = 1.0

TASK_STATES = ('received', 'started', 'succeeded', 'failed', 'retried', 'rejected', 'revoked')
TASK_TYPES = ('task-sent',) + tuple('task-' + state for state in TASK_STATES)
WORKER_TYPES = ('worker-online', 'worker-heartbeat', 'worker-offline')
EVENT_TYPES = TASK_TYPES + WORKER_TYPES

# celery/events/state.py: a worker is offline once 2 heartbeat intervals pass without one.
HEARTBEAT_EXPIRE_FACTOR = 2.0
DEFAULT_HEARTBEAT = 2.0
# The most failed tasks remembered while listening, whatever max_failures asks (memory bound).
FAILED_KEEP = 1000

EVENTS_OFF_ADVICE = ('turn task events on with celeryops.fleet.celery_worker (events: true) or start the '
                     'workers with -E')


def routing_key(types):
    """One binding for the window: every event, or worker events only when no task type is asked.

    (On Redis it becomes the subscription's pattern, as kombu makes it: ``#`` reads as ``*``.)
    """
    if types and not any(t.startswith('task-') for t in types):
        return 'worker.#'
    return '#'


def readable_event(event):
    """Whether ``event`` is shaped as Celery's events, as far as the summary reads it: a dict with a
    type, text (or nothing) where it keeps names, a number (or nothing) where it sorts by time."""
    return (isinstance(event, dict) and isinstance(event.get('type'), str)
            and all(isinstance(event.get(key), (str, type(None))) for key in ('hostname', 'uuid', 'name'))
            and isinstance(event.get('timestamp'), (int, float, type(None))))


def percentile(ordered, fraction):
    """Nearest-rank percentile of a sorted, non-empty list."""
    return ordered[max(0, int(math.ceil(fraction * len(ordered))) - 1)]


def traceback_line(text):
    """The line of a Python traceback that places the failure: its innermost ``File ...`` frame.

    (The very first line is always ``Traceback (most recent call last):``, which says nothing.)
    """
    if not isinstance(text, str) or not text.strip():
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    frames = [line for line in lines if line.startswith('File ')]
    return frames[-1] if frames else lines[0]


class _Worker(object):
    def __init__(self, hostname):
        self.hostname = hostname
        self.last_seen = None        # local monotonic time of its last event
        self.last_heartbeat = None   # the worker's own timestamp of its last heartbeat
        self.heard_at = None         # local monotonic time of its last heartbeat
        self.freq = None
        self.active = None
        self.loadavg = None
        self.sw_ver = None
        self.processed = []          # 'processed' of its first and last heartbeat
        self.busy = False            # a heartbeat showed active tasks
        self.task_events = 0
        self.offline_at = None       # local time of a worker-offline event

    def heartbeat(self, event, received_at):
        self.heard_at = received_at
        self.last_heartbeat = event.get('timestamp')
        if isinstance(event.get('freq'), (int, float)) and event['freq'] > 0:
            self.freq = float(event['freq'])
        self.active = event.get('active')
        self.loadavg = event.get('loadavg')
        self.sw_ver = event.get('sw_ver') or self.sw_ver
        if isinstance(event.get('processed'), int):
            self.processed = (self.processed or [event['processed']])[:1] + [event['processed']]
        if isinstance(self.active, int) and self.active > 0:
            self.busy = True

    def ran_tasks(self):
        return self.busy or (len(self.processed) == 2 and self.processed[1] > self.processed[0])

    def offline_reason(self, now):
        """Why the worker counts as gone at ``now`` (None while it is alive)."""
        if self.offline_at is not None and self.offline_at >= (self.last_seen or 0):
            return 'worker-offline'
        expires = HEARTBEAT_EXPIRE_FACTOR * (self.freq or DEFAULT_HEARTBEAT)
        if now - self.last_seen > expires:
            return 'no heartbeat for %.1fs (more than %.1fs)' % (now - self.last_seen, expires)
        return None

    def facts(self, now):
        reason = self.offline_reason(now)
        task_events = True if self.task_events else (False if self.ran_tasks() else None)
        return dict(online=reason is None, offline_reason=reason, last_heartbeat=self.last_heartbeat,
                    seconds_since_heard=round(now - self.last_seen, 3), freq=self.freq, active=self.active,
                    processed=self.processed[-1] if self.processed else None, loadavg=self.loadavg,
                    sw_ver=self.sw_ver, task_events=task_events)


class EventSummary(object):
    """What a window of events says: counts per type, per task, failures and workers."""

    def __init__(self, types=None, max_failures=20):
        self.types = set(types or EVENT_TYPES)
        self.max_failures = max_failures
        self.counts = {}
        self.total = 0
        self.undecodable = 0
        self.names = {}      # task uuid -> name, from task-received / task-sent
        self.tasks = {}
        self.runtimes = {}
        self.failures = []
        self.failures_total = 0
        self.workers = {}
        self.no_exchange = False   # RabbitMQ: the event exchange does not exist

    def add(self, event, received_at):
        """Take one event (a dict as Celery sends it); returns whether it was counted."""
        if not readable_event(event):
            self.undecodable += 1
            return False
        kind = event['type']
        hostname = event.get('hostname')
        worker = None
        if isinstance(hostname, str) and hostname and (kind.startswith('worker-') or kind != 'task-sent'):
            worker = self.workers.get(hostname) or self.workers.setdefault(hostname, _Worker(hostname))
            worker.last_seen = received_at
            if kind == 'worker-heartbeat' or kind == 'worker-online':
                worker.heartbeat(event, received_at)
            elif kind == 'worker-offline':
                worker.offline_at = received_at
            elif kind.startswith('task-'):
                worker.task_events += 1
        if kind.startswith('task-') and event.get('uuid') and event.get('name'):
            self.names[event['uuid']] = event['name']
        if kind not in self.types:
            return False
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.total += 1
        state = kind[len('task-'):] if kind.startswith('task-') else None
        if state in TASK_STATES:
            name = self.names.get(event.get('uuid')) or event.get('name') or UNKNOWN_TASK
            per_task = self.tasks.get(name) or self.tasks.setdefault(name, dict((s, 0) for s in TASK_STATES))
            per_task[state] += 1
            if state == 'succeeded' and isinstance(event.get('runtime'), (int, float)):
                self.runtimes.setdefault(name, []).append(float(event['runtime']))
            if state == 'failed':
                self.failures_total += 1
                self.failures.append(dict(uuid=event.get('uuid'), name=name, exception=event.get('exception'),
                                          traceback=traceback_line(event.get('traceback')), hostname=hostname,
                                          timestamp=event.get('timestamp')))
                del self.failures[:-FAILED_KEEP]
        return True

    def result(self, now=None):
        """The summary at ``now`` (local monotonic time; default: this moment)."""
        now = time.monotonic() if now is None else now
        tasks = {}
        for name, per_task in self.tasks.items():
            entry = dict(per_task)
            ordered = sorted(self.runtimes.get(name, []))
            entry['runtime'] = dict(min=ordered[0], p50=percentile(ordered, 0.5), p95=percentile(ordered, 0.95),
                                    max=ordered[-1]) if ordered else None
            tasks[name] = entry
        failures = sorted(self.failures, key=lambda f: f['timestamp'] or 0, reverse=True)[:self.max_failures]
        workers = dict((host, w.facts(now)) for host, w in self.workers.items())
        return dict(counts=self.counts, events=self.total, tasks=tasks, failures=failures,
                    failures_total=self.failures_total, workers=workers,
                    offline=sorted(h for h, w in workers.items() if not w['online']),
                    undecodable=self.undecodable, hint=self.hint())

    def hint(self):
        """Why no (task) events came, when that is the likely story; else None."""
        if self.no_exchange:
            return ('no events: the event exchange %s does not exist on this vhost, so no worker has ever sent an '
                    'event through it. Are the workers using this broker and vhost?' % EVENT_EXCHANGE)
        if self.workers == {} and self.undecodable == 0:
            return ('no events arrived: no worker sent even a heartbeat. Are workers running against this broker '
                    '(and database or vhost)? Workers send a heartbeat every %g s, so a shorter window may see none.'
                    % DEFAULT_HEARTBEAT)
        if not self.types & set(TASK_TYPES):
            return None
        silent = sorted(h for h, w in self.workers.items() if not w.task_events and w.ran_tasks())
        if silent:
            return ('%s ran tasks but sent no task events: task events are off (no -E); %s.'
                    % (', '.join(silent), EVENTS_OFF_ADVICE))
        if not any(w.task_events for w in self.workers.values()):
            return ('no task events arrived although %d worker(s) sent heartbeats: either they ran no task, or task '
                    'events are off (no -E); %s.' % (len(self.workers), EVENTS_OFF_ADVICE))
        return None


class _Interrupted(BrokerError):
    pass


def _raise_interrupted(signum, frame):
    raise _Interrupted('interrupted by signal %d while listening; the event queue was removed' % signum)


class _RedisEvents(object):
    """Events read through a pattern subscription (kombu's fanout_patterns, on by default; the
    bare channel too, for workers that turned it off)."""

    def __init__(self, broker, layout, key):
        from ansible_collections.celeryops.fleet.plugins.module_utils._redis_connection import RedisConnection
        self.connection = RedisConnection(broker, client_name=CLIENT_NAME)
        # redis-py sends the prefix itself only through kombu's prefixing client: the layout adds it.
        channel = layout.fanout_channel(broker.db, EVENT_EXCHANGE)
        self.subscription = self.connection.subscribe([channel, channel + '/' + key.replace('#', '*')])

    def exists(self):
        return True

    def alive(self):
        self.connection.ping()

    def receive(self, wait):
        """Bodies of the events that came within ``wait`` seconds; None for an undecodable one."""
        out = []
        for data in self.subscription.receive(wait):
            try:
                out.append(json_body(load_envelope(data), (dict, list)))
            except NotAnEnvelope:
                out.append(None)
        return out

    def close(self):
        try:
            self.subscription.close()
        finally:
            self.connection.close()


class _AmqpEvents(object):
    """Events consumed from a queue of our own bound to the topic exchange (only looked up:
    creating it is the workers' business)."""

    def __init__(self, broker, key):
        from ansible_collections.celeryops.fleet.plugins.module_utils._amqp_connection import AmqpConnection
        self.connection = AmqpConnection(broker)
        self.key = key
        self.queue = None

    def exists(self):
        """Bind our queue, or False when the event exchange does not exist on this vhost."""
        if not self.connection.exchange_exists(EVENT_EXCHANGE, 'topic'):
            return False
        self.queue = QUEUE_PREFIX + str(uuid.uuid4())
        self.connection.listen(self.queue, EVENT_EXCHANGE, self.key, expires=QUEUE_EXPIRES, message_ttl=MESSAGE_TTL,
                               exclusive=True, what='the event queue')
        return True

    def alive(self):
        self.connection.check_queue(self.queue, what='checking the event queue on')

    def receive(self, wait):
        return [value if isinstance(value, (dict, list)) else None
                for _headers, value in self.connection.receive(wait, what='listening for events on')]

    def close(self):
        # The queue is exclusive: it goes with the connection.
        self.connection.close()


def listen(broker, summary, duration, max_events=None, types=None, layout=None):
    """Listen to ``broker`` for ``duration`` seconds or ``max_events`` counted events, feeding
    ``summary``. Returns (seconds listened, why it ended: duration, max_events or no_exchange).
    ``layout``: the RedisLayout of kombu's transport options (only its key prefix matters to events).

    Nothing of ours stays on the broker on any way out (end, error, timeout, SIGTERM).
    """
    key = routing_key(types)
    started = time.monotonic()
    deadline = started + duration
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    events = None
    try:
        if broker.transport == 'redis':
            events = _RedisEvents(broker, layout, key)
        else:
            events = _AmqpEvents(broker, key)
        if not events.exists():
            summary.no_exchange = True
            return time.monotonic() - started, 'no_exchange'
        checked = time.monotonic()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return time.monotonic() - started, 'duration'
            if time.monotonic() - checked >= ALIVE_EVERY:
                try:
                    events.alive()
                except BrokerError as error:
                    error.msg = 'the broker stopped answering while listening for events: ' + error.msg
                    raise
                checked = time.monotonic()
            bodies = events.receive(min(left, 0.5))
            received_at = time.monotonic()   # when they came (receive returns at the first), not when the wait began
            for body in bodies:
                if body is None:
                    summary.undecodable += 1
                    continue
                # A prefork worker sends task events in batches (task.multi): a list.
                for event in body if isinstance(body, list) else [body]:
                    if summary.add(event, received_at) and max_events and summary.total >= max_events:
                        return time.monotonic() - started, 'max_events'
    finally:
        signal.signal(signal.SIGTERM, previous)
        if events is not None:
            try:
                events.close()
            except Exception:  # closing is best effort: the first failure is the one to report
                pass
