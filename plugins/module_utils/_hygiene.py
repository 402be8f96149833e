# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Broker hygiene: what on a broker loses, repeats or piles up Celery's messages (celery_broker_info's logic;
a clean-up module finds what to clean with the same functions).

A finding is ``{kind, name, count, bytes, oldest_seconds, detail}``; KINDS says what each kind means and what
is safe to do about it. Everything here only reads, in bounded steps:

- Redis: keys are found with SCAN (a COUNT per step), kombu's ``unacked`` hash is read with HSCAN and the
  scores of ``unacked_index`` with ZSCORE in batches, lists in chunks (_redis_queues); never KEYS, HGETALL or a
  whole-hash script, so no single command holds the server for long.
- ``orphan_reply`` (Redis): a reply list ``<oid>.reply.celery.pidbox`` of a remote-control client that takes
  nothing from it. A live client (``celery inspect``, Flower, this collection) pops its replies within its
  timeout, so its list is empty (does not exist) or touched moments ago. A list is orphaned when its binding
  in ``_kombu.binding.reply.celery.pidbox`` is gone (the client closed: no reply can come, nobody reads) or
  when no command touched it for ``orphan_after`` seconds (OBJECT IDLETIME, read before anything else touches
  the key: the client died without closing, as a killed ``celery inspect`` does). Replies carry no timestamp,
  so the age is the idle time: how long ago the last reply came. Under an LFU ``maxmemory-policy`` Redis
  keeps no idle time: then only unbound lists are found.
- The ready messages of a queue are sampled (``message_sample`` per queue, in run order) for
  ``eta_beyond_visibility`` and ``duplicate_task_id``; the ``detail`` says when a queue held more.
- ``result_without_ttl``: up to ``result_sample`` keys ``celery-task-meta-*`` of the result backend (SCAN
  order), their TTL and MEMORY USAGE; ``detail`` says whether the scan saw every key (then the count is
  exact) or stopped at the sample.

Private to celeryops.fleet; the API may change between releases.
"""

from __future__ import annotations

import datetime
import math
import time

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, OptionError, check_seconds
from ansible_collections.celeryops.fleet.plugins.module_utils._celery_names import (
    EVENT_QUEUE_PREFIX, REPLY_EXCHANGE, is_internal_queue)
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import (
    NotAnEnvelope, describe_message, load_envelope, loads)

# kind -> (what it means, what is safe to do). The module's documentation says the same.
KINDS = {
    'orphan_reply': ('a remote-control reply list/queue nobody reads (its client died or closed); Redis never expires it',
                     'delete it (celery_broker state=cleaned kinds=[orphan_reply]); nothing reads it'),
    'stale_event_queue': ('a celeryev.* queue with no consumer: events pile up in RabbitMQ memory',
                          'delete it; a monitor that comes back declares its own'),
    'no_consumer': ('a queue with ready messages that no answering worker consumes',
                    'start or point a worker at it (celery_worker state=consuming), or purge it if it is obsolete'),
    'overdue_unacked': ('messages held unacknowledged longer than visibility_timeout by a worker that is gone; '
                        'they run late (when a worker restores them) or never',
                        'start a worker (kombu restores them), or restore them (celery_broker restore_overdue)'),
    'eta_beyond_visibility': ('messages whose ETA is further out than the visibility timeout: a worker holds them '
                              'unacknowledged, kombu redelivers them to another, and they run twice',
                              'raise visibility_timeout above the longest countdown, or schedule with beat'),
    'duplicate_task_id': ('the same task id more than once across ready and unacknowledged messages',
                          'find the producer that republishes; revoke the id (celery_task) if it must run once'),
    'result_without_ttl': ('results stored without expiry (result_expires 0 or None): they fill the backend',
                           'set result_expires; expire or delete the old keys'),
    'eviction_policy': ('Redis maxmemory-policy other than noeviction: under memory pressure Redis deletes '
                        'queues, messages and bindings', 'CONFIG SET maxmemory-policy noeviction (and in redis.conf)'),
    'memory_near_limit': ('used memory close to maxmemory: writes will fail or keys be evicted',
                          'raise maxmemory, drain backlogs, expire results'),
    'persistence_off': ('Redis keeps nothing on disk (no RDB save points, no AOF): a restart loses every queue',
                        'enable appendonly (or save points)'),
    'memory_alarm': ('a RabbitMQ node is over its memory watermark: every publisher is blocked',
                     'drain queues (stale event queues first), raise vm_memory_high_watermark'),
    'disk_alarm': ('a RabbitMQ node is under its free disk limit: every publisher is blocked',
                   'free disk space, raise disk_free_limit only with care'),
    'non_durable_queue': ('a task queue that is not durable: a broker restart loses it and its messages',
                          'declare it durable (Celery does by default; check task_queues)'),
}
REDIS_KINDS = ('orphan_reply', 'no_consumer', 'overdue_unacked', 'eta_beyond_visibility', 'duplicate_task_id',
               'result_without_ttl', 'eviction_policy', 'memory_near_limit', 'persistence_off')
AMQP_KINDS = ('orphan_reply', 'stale_event_queue', 'no_consumer', 'eta_beyond_visibility', 'memory_alarm', 'disk_alarm',
              'non_durable_queue')

RESULT_PATTERN = 'celery-task-meta-*'
# What one SCAN, HSCAN step or pipeline takes: each command stays far under a millisecond per element.
SCAN_COUNT = 1000
HSCAN_COUNT = 100
BATCH = 500
# What one broadcast asks: the queues each worker consumes and the tasks it holds.
BROADCAST = {'active_queues': {}, 'active': {}, 'reserved': {}, 'scheduled': {}}
REPLY_SUFFIX = '.' + REPLY_EXCHANGE
KOMBU_PREFIX = '_kombu.'


def hygiene_argument_spec():
    return dict(
        visibility_timeout=dict(type='float', default=3600.0),
        consumer_timeout=dict(type='float', default=1800.0),
        orphan_after=dict(type='float', default=60.0),
        max_findings=dict(type='dict'),
        result_backend=dict(type='str', no_log=True),
        result_backend_broker=dict(type='bool', default=False),
        result_sample=dict(type='int', default=10000),
        message_sample=dict(type='int', default=10000),
        memory_ratio=dict(type='float', default=0.9),
        expected_nodes=dict(type='list', elements='str'),
        expected_count=dict(type='int'),
        timeout=dict(type='float', default=1.0),
    )


def check_hygiene_params(params):
    """What the argument spec cannot say; raises OptionError naming the option."""
    for option in ('visibility_timeout', 'consumer_timeout', 'orphan_after', 'timeout'):
        check_seconds(params[option], option)
    for option in ('result_sample', 'message_sample'):
        if params[option] < 1:
            raise OptionError('%s must be 1 or more, got %d' % (option, params[option]), option=option)
    if not (isinstance(params['memory_ratio'], float) and 0 < params['memory_ratio'] <= 1):
        raise OptionError('memory_ratio must be above 0 and at most 1, got %s' % params['memory_ratio'],
                          option='memory_ratio')
    if params['expected_count'] is not None and params['expected_count'] < 0:
        raise OptionError('expected_count must be 0 or more, got %d' % params['expected_count'], option='expected_count')
    if params['expected_nodes'] is not None and not params['expected_nodes']:
        raise OptionError('expected_nodes is empty: omit it or name at least one node', option='expected_nodes')
    check_max_findings(params['max_findings'])


def check_max_findings(limits):
    for kind, limit in (limits or {}).items():
        if kind not in KINDS:
            raise OptionError('max_findings: unknown kind %r; the kinds are %s' % (kind, ', '.join(sorted(KINDS))),
                              option='max_findings')
        if isinstance(limit, bool) or not isinstance(limit, int):
            try:
                limit = int(str(limit), 10)
            except ValueError:
                limit = -1
            if limit < 0:
                raise OptionError('max_findings: %s must be a number of findings (0 or more)' % kind,
                                  option='max_findings')
        if limit < 0:
            raise OptionError('max_findings: %s must be 0 or more, got %d' % (kind, limit), option='max_findings')


# -- pure logic -------------------------------------------------------------------------------------

def finding(kind, name, count=None, size=None, oldest_seconds=None, detail=''):
    return dict(kind=kind, name=name, count=count, bytes=size,
                oldest_seconds=round(oldest_seconds, 3) if oldest_seconds is not None else None, detail=detail)


def summarize(findings, kinds):
    """kind -> number of findings, every kind of ``kinds`` (0 included) and any other found."""
    out = dict((kind, 0) for kind in kinds)
    for item in findings:
        out[item['kind']] = out.get(item['kind'], 0) + 1
    return out


def threshold_problems(summary, limits):
    """(option, text) for each kind with more findings than max_findings allows."""
    over = ['%s: %d (max %d)' % (kind, summary.get(kind, 0), int(limit))
            for kind, limit in sorted((limits or {}).items()) if summary.get(kind, 0) > int(limit)]
    return [('max_findings', 'findings over max_findings: ' + ', '.join(over))] if over else []


def parse_eta(eta):
    """Unix time of a Celery ETA (ISO 8601; naive means UTC), or None for anything else."""
    if not isinstance(eta, str) or not eta:
        return None
    text = eta[:-1] + '+00:00' if eta.endswith('Z') else eta
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def reply_queue_of(name):
    """The reply queue a (prefix-free) key name belongs to, or None: ``<oid>.reply.celery.pidbox`` itself or one
    of its priority lists (``queue + sep + step``: the sep is whatever follows the suffix)."""
    at = name.find(REPLY_SUFFIX)
    if at <= 0 or name.startswith(KOMBU_PREFIX):   # kombu's binding sets of the reply exchange
        return None
    end = at + len(REPLY_SUFFIX)
    rest = name[end:]
    if rest and not rest[-1:].isdigit():
        return None
    return name[:end]


def is_orphan(idle, bound, orphan_after):
    """A reply list with no reader: unbound, or untouched for orphan_after seconds (idle None: not known)."""
    return not bound or (idle is not None and idle >= orphan_after)


def settings_findings(config, memory, memory_ratio):
    """Findings from CONFIG GET (maxmemory-policy, maxmemory, save, appendonly) and INFO memory (used_memory)."""
    out = []
    policy = config.get('maxmemory-policy')
    maxmemory = _number(config.get('maxmemory'))
    if policy and policy != 'noeviction':
        out.append(finding('eviction_policy', 'maxmemory-policy', detail='maxmemory-policy is %s (maxmemory %s)' % (
            policy, maxmemory if maxmemory else 'unlimited: eviction starts once one is set')))
    used = _number(memory.get('used_memory'))
    if maxmemory and used is not None and used >= memory_ratio * maxmemory:
        out.append(finding('memory_near_limit', 'maxmemory', size=used, detail='used_memory %d of maxmemory %d '
                           '(%.0f%%, memory_ratio %s)' % (used, maxmemory, 100.0 * used / maxmemory, memory_ratio)))
    if 'save' in config and 'appendonly' in config and not (config.get('save') or '').strip() \
            and config.get('appendonly') != 'yes':
        out.append(finding('persistence_off', 'persistence', detail='no RDB save points and appendonly no'))
    return out


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) else None


def no_consumer_findings(depths, consumed, answered):
    """Queues (name -> ready) with messages that no answering worker consumes; ``answered``: the nodes."""
    out = []
    for name, ready in sorted(depths.items()):
        if ready and name not in consumed:
            out.append(finding('no_consumer', name, count=ready, detail='%d ready; %s' % (
                ready, 'no answering worker (%s) consumes it' % ', '.join(answered) if answered
                else 'no worker answered the broadcast')))
    return out


class Tally(object):
    """Per queue: count, bytes, oldest age (seconds) and a note, for per-queue findings."""

    def __init__(self):
        self.rows = {}

    def add(self, queue, size, age=None, note=None):
        row = self.rows.setdefault(queue, dict(count=0, size=0, oldest=None, notes=[]))
        row['count'] += 1
        row['size'] += size or 0
        if age is not None and (row['oldest'] is None or age > row['oldest']):
            row['oldest'] = age
        if note and len(row['notes']) < 3:
            row['notes'].append(note)

    def findings(self, kind, describe):
        return [finding(kind, queue, count=row['count'], size=row['size'], oldest_seconds=row['oldest'],
                        detail=describe(queue, row)) for queue, row in sorted(self.rows.items())]


def duplicate_findings(places):
    """``places``: task id -> [where, ...] (each occurrence); a finding per id seen more than once."""
    return [finding('duplicate_task_id', task_id, count=len(where), detail='seen in ' + ', '.join(where))
            for task_id, where in sorted(places.items()) if len(where) > 1]


def message_fields(raw):
    """(task id, task name, eta) of a raw Redis message (or a decoded envelope dict); (None, None, None) for junk."""
    try:
        envelope = load_envelope(raw)
    except NotAnEnvelope:
        return None, None, None
    view = describe_message(envelope.get('headers'), envelope.get('properties'), envelope)
    task_id = view.get('id') if isinstance(view.get('id'), str) else None
    return task_id, view.get('task'), view.get('eta')


def reported_ids(replies):
    """The task ids the answering workers hold (active, reserved, scheduled): held entries of other ids have lost
    their holder."""
    reported = set(task.get('id') for command in ('active', 'reserved') for tasks in replies.first(command).values()
                   for task in tasks)
    reported |= set((entry.get('request') or {}).get('id') for tasks in replies.first('scheduled').values()
                    for entry in tasks if isinstance(entry.get('request'), dict))
    return reported


def held_fields(value):
    """(message, exchange, routing_key) of an unacked entry (kombu's JSON [message, exchange, routing_key]), or None."""
    try:
        held = loads(value)
    except NotAnEnvelope:
        return None
    if isinstance(held, list) and len(held) == 3 and isinstance(held[0], dict) and all(isinstance(p, str) for p in held[1:]):
        return held
    return None


def _text(value):
    return value.decode('utf-8', 'replace') if isinstance(value, bytes) else value


# -- Redis ------------------------------------------------------------------------------------------

class RedisHygiene(object):
    """The Redis findings, from a RedisQueues (``queues``) and a Control (``control``) of the same broker."""

    def __init__(self, params, queues, control, backend=None):
        self.params = params
        self.queues = queues
        self.control = control
        self.backend = backend   # a RedisConnection to the result backend, or None
        self.layout = queues.layout
        self.call = queues.call
        self.client = queues.client
        self.notes = {}
        self.orphan_lists = {}   # orphan_reply queue -> its lists (keys), from the last orphan_replies()
        self.overdue_entries = []   # from the last held(): dict(tag, queue, queues, id, age) of each overdue entry

    def findings(self):
        bindings = self.queues.bindings()
        out = self.orphan_replies(bindings)   # first: before our own broadcast makes a reply list
        replies = self.broadcast()
        answered = self.notes['nodes']
        consumed = set(q['name'] for queues in replies.first('active_queues').values() for q in queues)
        reported = reported_ids(replies)
        names = self.queues.discover(bindings=bindings)
        depths = dict((name, sum(steps.values())) for name, steps in self.queues.depths(names).items())
        out += no_consumer_findings(depths, consumed, answered)
        now = self._server_time()
        places = {}
        eta_tally = Tally()
        out += self.held(bindings, reported, now, places, eta_tally)
        self.ready(depths, now, places, eta_tally)
        out += eta_tally.findings('eta_beyond_visibility', lambda queue, row: '%d with an ETA more than %ss ahead%s' % (
            row['count'], self.params['visibility_timeout'], ' (%s)' % '; '.join(row['notes']) if row['notes'] else ''))
        out += duplicate_findings(places)
        out += self.results()
        out += self.settings()
        return out

    def broadcast(self):
        """One broadcast of BROADCAST; notes who answered."""
        replies = self.control.request(BROADCAST, self._expectation(), timeout=self.params['timeout'])
        answered = sorted(replies.nodes('active_queues'))
        self.notes.update(nodes=answered, missing=self._expectation().missing(set(answered)), duplicates=replies.duplicates())
        return replies

    def overdue(self, bindings):
        """The overdue_unacked findings alone (one broadcast, the unacked hash); self.overdue_entries names them."""
        return self.held(bindings, reported_ids(self.broadcast()), self._server_time(), {}, Tally())

    def _expectation(self):
        from ansible_collections.celeryops.fleet.plugins.module_utils._control import Expectation
        return Expectation(self.params['expected_nodes'], self.params['expected_count'])

    def _server_time(self):
        seconds, micros = self.call(self.client.time)
        return seconds + micros / 1e6

    def _pipeline(self, commands):
        """Replies of ``commands`` ((method name, args...)) in one round trip; an error reply stays an exception."""
        pipe = self.queues.connection.pipeline(transaction=False)
        for command in commands:
            getattr(pipe, command[0])(*command[1:])
        return self.call(pipe.execute, raise_on_error=False)

    def orphan_replies(self, bindings):
        bound = set(queue for _key, queue in bindings.get(REPLY_EXCHANGE, ()))
        prefix = self.layout.prefix
        keys = []
        for key in self.call(lambda: list(self.client.scan_iter(match='*' + REPLY_SUFFIX + '*', count=SCAN_COUNT))):
            name = _text(key)
            if name.startswith(prefix) and reply_queue_of(name[len(prefix):]):
                keys.append(key)
        # OBJECT IDLETIME, TYPE and MEMORY USAGE leave a key's idle time alone; LLEN resets it, and the next run
        # would take an orphan for a list just read. So the length is read under CLIENT NO-TOUCH (Redis 7.2+), or
        # for lists orphaned whatever their idle time (unbound); else it stays unknown (count null).
        no_touch = not isinstance(self._pipeline([('execute_command', 'CLIENT', 'NO-TOUCH', 'ON'),
                                                  ('execute_command', 'CLIENT', 'NO-TOUCH', 'OFF')])[0], Exception)
        rows = {}   # queue -> {idle, unknown, size, keys}
        for start in range(0, len(keys), BATCH):
            chunk = keys[start:start + BATCH]
            n = len(chunk)
            answers = self._pipeline([('object', 'idletime', key) for key in chunk] + [('type', key) for key in chunk]
                                     + [('memory_usage', key) for key in chunk])
            for i, key in enumerate(chunk):
                idle, kind, size = answers[i], answers[n + i], answers[2 * n + i]
                if _text(kind) != 'list':
                    continue
                row = rows.setdefault(reply_queue_of(_text(key)[len(prefix):]),
                                      dict(idle=None, unknown=False, size=0, keys=[]))
                if isinstance(idle, int):
                    row['idle'] = idle if row['idle'] is None else min(row['idle'], idle)
                else:
                    row['unknown'] = True   # an LFU policy keeps no idle time
                row['size'] += size if isinstance(size, int) else 0
                row['keys'].append(key)
        orphans = []
        for queue, row in sorted(rows.items()):
            idle = None if row['unknown'] else row['idle']
            if is_orphan(idle, queue in bound, self.params['orphan_after']):
                orphans.append((queue, row, idle))
        self.orphan_lists = dict((queue, row['keys']) for queue, row, _idle in orphans)
        lengths = {}
        countable = [key for queue, row, _idle in orphans if no_touch or queue not in bound for key in row['keys']]
        for start in range(0, len(countable), BATCH):
            chunk = countable[start:start + BATCH]
            commands = [('llen', key) for key in chunk]
            if no_touch:
                commands = [('execute_command', 'CLIENT', 'NO-TOUCH', 'ON')] + commands + \
                    [('execute_command', 'CLIENT', 'NO-TOUCH', 'OFF')]
            answers = self._pipeline(commands)
            lengths.update(zip(chunk, answers[1:-1] if no_touch else answers))
        out = []
        for queue, row, idle in orphans:
            counted = [lengths.get(key) for key in row['keys']]
            count = sum(counted) if all(isinstance(c, int) for c in counted) else None
            why = 'still bound, untouched for %ss' % idle if queue in bound else 'its client unbound it (closed)'
            out.append(finding('orphan_reply', queue, count=count, size=row['size'], oldest_seconds=idle,
                               detail='%s nobody reads; %s' % (
                                   '%d replies' % count if count is not None else
                                   'replies (not counted: LLEN would reset the idle time before Redis 7.2)', why)))
        return out

    def held(self, bindings, reported, now, places, eta_tally):
        """overdue_unacked findings; fills ``places`` (ids) and ``eta_tally`` from kombu's unacked hash."""
        from ansible_collections.celeryops.fleet.plugins.module_utils._redis_queues import route
        entries = []   # (tag, size, task id, eta, queue)
        routes = {}   # tag -> every queue kombu would restore the entry to
        self.overdue_entries = []
        cursor = 0
        while True:
            cursor, page = self.call(self.client.hscan, self.layout.unacked, cursor, count=HSCAN_COUNT)
            for tag, value in page.items():
                held = held_fields(value)
                if held is None:
                    continue
                task_id, _task, eta = message_fields(held[0])
                routed = routes[tag] = route(bindings, held[1], held[2])
                entries.append((tag, len(value), task_id, eta, routed[0] if routed else held[2] or '?'))
            if not cursor:
                break
        overdue = Tally()
        limit = self.params['visibility_timeout']
        for start in range(0, len(entries), BATCH):
            chunk = entries[start:start + BATCH]
            scores = self._pipeline([('zscore', self.layout.unacked_index, e[0]) for e in chunk])
            for (tag, size, task_id, eta, queue), score in zip(chunk, scores):
                age = now - score if isinstance(score, float) else None
                if task_id:
                    places.setdefault(task_id, []).append('unacked (%s)' % queue)
                ahead = parse_eta(eta)
                if ahead is not None and ahead - now > limit:
                    eta_tally.add(queue, size, age, 'held, %s' % task_id)
                if age is not None and age > limit and task_id not in reported:
                    overdue.add(queue, size, age, task_id)
                    self.overdue_entries.append(dict(tag=tag, queue=queue, queues=routes[tag], id=task_id, age=age))
        return overdue.findings('overdue_unacked', lambda queue, row: (
            '%d held for more than %ss (visibility_timeout) by no answering worker; oldest %ss (%s)' % (
                row['count'], limit, int(row['oldest']), ', '.join(row['notes']))))

    def ready(self, depths, now, places, eta_tally):
        sample = self.params['message_sample']
        for name, ready in sorted(depths.items()):
            if not ready:
                continue
            read = 0
            elements = self.queues.elements(name)
            try:
                for _step, raw in elements:
                    if read >= sample:
                        break
                    read += 1
                    task_id, _task, eta = message_fields(raw)
                    if task_id:
                        places.setdefault(task_id, []).append('ready (%s)' % name)
                    ahead = parse_eta(eta)
                    if ahead is not None and ahead - now > self.params['visibility_timeout']:
                        eta_tally.add(name, len(raw), None, 'ready, %s' % task_id)
            finally:
                elements.close()
            if read < ready:
                self.notes.setdefault('sampled', {})[name] = read

    def results(self):
        if self.backend is None:
            return []
        call, client = self.backend.call, self.backend.client
        keys, cursor, complete = [], 0, False
        sample = self.params['result_sample']
        while len(keys) < sample:
            cursor, page = call(client.scan, cursor, match=RESULT_PATTERN, count=SCAN_COUNT)
            room = sample - len(keys)
            keys += page[:room]
            if not cursor:
                complete = len(page) <= room
                break
        count = size = 0
        for start in range(0, len(keys), BATCH):
            chunk = keys[start:start + BATCH]
            pipe = self.backend.pipeline(transaction=False)
            for key in chunk:
                pipe.ttl(key)
                pipe.memory_usage(key)
            answers = call(pipe.execute, raise_on_error=False)
            for ttl, used in zip(answers[0::2], answers[1::2]):
                if ttl == -1:
                    count += 1
                    size += used if isinstance(used, int) else 0
        self.notes['results_sampled'] = len(keys)
        if not count:
            return []
        return [finding('result_without_ttl', RESULT_PATTERN, count=count, size=size, detail='%d of %d result keys '
                        'have no expiry (%s)' % (count, len(keys), 'every key scanned' if complete else
                                                 'a sample: the scan stopped at result_sample keys'))]

    def settings(self):
        try:
            config = {}
            for name in ('maxmemory-policy', 'maxmemory', 'save', 'appendonly'):
                config.update((_text(k), _text(v)) for k, v in self.call(self.client.config_get, name).items())
            memory = self.call(self.client.info, 'memory')
        except BrokerError as error:
            if error.lost:
                raise
            self.notes['settings_error'] = error.msg   # CONFIG refused (ACL, renamed command): not a finding
            return []
        return settings_findings(config, memory, self.params['memory_ratio'])


# -- RabbitMQ ---------------------------------------------------------------------------------------

def amqp_findings(queue_records, node_records):
    """Findings from the management API's queue records (name, consumers, messages_ready, messages, durable,
    memory, idle_since) and node records (name, mem_alarm, disk_free_alarm, mem_used, mem_limit, disk_free,
    disk_free_limit)."""
    out = []
    for record in sorted(queue_records, key=lambda r: r.get('name') or ''):
        name = record.get('name')
        if not isinstance(name, str):
            continue
        consumers = record.get('consumers') or 0
        ready = record.get('messages_ready') or 0
        total = record.get('messages') or 0
        size = record.get('memory') if isinstance(record.get('memory'), int) else None
        if name.endswith(REPLY_SUFFIX) and not consumers:
            out.append(finding('orphan_reply', name, count=total, size=size,
                               detail='%d replies, no consumer' % total))
        elif name.startswith(EVENT_QUEUE_PREFIX) and not consumers:
            out.append(finding('stale_event_queue', name, count=total, size=size,
                               detail='%d events, no consumer' % total))
        elif not is_internal_queue(name):
            if ready and not consumers:
                out.append(finding('no_consumer', name, count=ready, size=size,
                                   detail='%d ready, no consumer' % ready))
            if record.get('durable') is False:
                out.append(finding('non_durable_queue', name, count=total, size=size,
                                   detail='not durable: lost with its %d messages when the broker restarts' % total))
    for node in node_records:
        name = node.get('name')
        if node.get('mem_alarm'):
            out.append(finding('memory_alarm', name, size=node.get('mem_used'), detail='memory alarm: %s used of a '
                               'watermark of %s bytes; publishers are blocked' % (node.get('mem_used'), node.get('mem_limit'))))
        if node.get('disk_free_alarm'):
            out.append(finding('disk_alarm', name, size=node.get('disk_free'), detail='disk alarm: %s bytes free, limit '
                               '%s; publishers are blocked' % (node.get('disk_free'), node.get('disk_free_limit'))))
    return out


def consumer_timeouts(queue_records, default):
    """queue -> seconds RabbitMQ lets a consumer hold a delivery unacknowledged: the queue's x-consumer-timeout
    argument, else its policy's consumer-timeout (both milliseconds), else ``default`` (the broker's
    consumer_timeout, which the management API does not show)."""
    out = {}
    for record in queue_records:
        value = None
        for source, key in (('arguments', 'x-consumer-timeout'), ('effective_policy_definition', 'consumer-timeout')):
            table = record.get(source)
            if value is None and isinstance(table, dict):
                value = _number(table.get(key))
        if isinstance(record.get('name'), str):
            out[record['name']] = value / 1000.0 if value is not None and value > 0 else default
    return out


def scheduled_eta_findings(scheduled, timeouts, default, now):
    """eta_beyond_visibility from the workers' ``scheduled`` replies (node -> entries): ETA tasks a worker holds
    unacknowledged until their ETA, beyond the consumer timeout of their queue (RabbitMQ then closes the channel
    and redelivers them: they run twice)."""
    tally = Tally()
    for node, entries in sorted(scheduled.items()):
        for entry in entries:
            request = entry.get('request') if isinstance(entry.get('request'), dict) else {}
            delivery = request.get('delivery_info') if isinstance(request.get('delivery_info'), dict) else {}
            queue = delivery.get('routing_key') if isinstance(delivery.get('routing_key'), str) else '?'
            eta = parse_eta(entry.get('eta'))
            if eta is not None and eta - now > timeouts.get(queue, default):
                tally.add(queue, 0, None, '%s on %s' % (request.get('id'), node))
    return tally.findings('eta_beyond_visibility', lambda queue, row: '%d held by workers with an ETA beyond the '
                          'consumer timeout (%ss) of the queue (%s)' % (row['count'], timeouts.get(queue, default),
                                                                        ', '.join(row['notes'])))


class AmqpHygiene(object):
    """The RabbitMQ findings, from the management API (a _management.Management) and one broadcast of
    ``scheduled`` (a _control.Control)."""

    QUEUE_COLUMNS = 'name,consumers,messages_ready,messages,durable,memory,arguments,effective_policy_definition'
    NODE_COLUMNS = 'name,mem_alarm,disk_free_alarm,mem_used,mem_limit,disk_free,disk_free_limit'

    def __init__(self, params, broker, management, control):
        self.params = params
        self.broker = broker
        self.management = management
        self.control = control
        self.notes = {}

    def queue_records(self):
        return list(self.management.queues(self.broker.vhost, self.QUEUE_COLUMNS).values())

    def findings(self):
        from ansible_collections.celeryops.fleet.plugins.module_utils._control import Expectation
        queues = self.queue_records()
        try:
            nodes = self.management.get('/api/nodes?columns=%s' % self.NODE_COLUMNS)
        except BrokerError as error:   # /api/nodes wants the monitoring tag: the alarms stay unknown
            nodes, self.notes['nodes_error'] = [], error.msg
        if not isinstance(nodes, list) or not all(isinstance(r, dict) for r in nodes):
            nodes = []
        found = amqp_findings(queues, nodes)
        expectation = Expectation(self.params['expected_nodes'], self.params['expected_count'])
        try:
            replies = self.control.request({'scheduled': {}}, expectation, timeout=self.params['timeout'])
        except BrokerError as error:
            # A node in alarm blocks every publisher of the cluster, this broadcast too: the alarm is what to report,
            # and what the workers hold (eta_beyond_visibility) stays unknown, said in broadcast_error.
            if not any(finding['kind'] in ('memory_alarm', 'disk_alarm') for finding in found):
                raise
            self.notes['broadcast_error'] = error.msg
            return found
        answered = sorted(replies.nodes('scheduled'))
        self.notes.update(nodes=answered, missing=expectation.missing(set(answered)), duplicates=replies.duplicates())
        default = self.params['consumer_timeout']
        return found + scheduled_eta_findings(replies.first('scheduled'), consumer_timeouts(queues, default), default,
                                              time.time())


# -- the module ---------------------------------------------------------------------------------------

def _open(params, broker):
    """(hygiene, things to close) for the broker of ``params``."""
    from ansible_collections.celeryops.fleet.plugins.module_utils._control import Control
    from ansible_collections.celeryops.fleet.plugins.module_utils._queues import open_queues, redis_layout
    if broker.transport != 'redis':
        from ansible_collections.celeryops.fleet.plugins.module_utils._queues import open_management
        control = Control(broker, redis_layout(params))
        return AmqpHygiene(params, broker, open_management(params, broker), control), [control]
    from ansible_collections.celeryops.fleet.plugins.module_utils._redis_connection import RedisConnection
    from ansible_collections.celeryops.fleet.plugins.module_utils._tasks import backend_broker
    opened = []
    try:
        queues = open_queues(params)
        opened.append(queues)
        control = Control(broker, redis_layout(params))
        opened.append(control)
        backend = None
        backend_url = backend_broker(params)
        if backend_url is not None:
            try:
                backend = RedisConnection(backend_url)
            except BrokerError as error:
                error.option = 'result_backend_broker' if params.get('result_backend_broker') else 'result_backend'
                raise
            opened.append(backend)
        return RedisHygiene(params, queues, control, backend), opened
    except BaseException:
        for thing in opened:
            thing.close()
        raise


def report(findings, notes, transport):
    kinds = REDIS_KINDS if transport == 'redis' else AMQP_KINDS
    order = dict((kind, index) for index, kind in enumerate(KINDS))
    findings = sorted(findings, key=lambda f: (order.get(f['kind'], len(order)), f['name'] or ''))
    out = dict(findings=findings, summary=summarize(findings, kinds), checked=list(kinds))
    out.update(notes)
    return out


def broker_info(params, broker, result):
    """celery_broker_info: fill ``result`` with findings, summary and what was checked; with wait, poll until
    max_findings holds; raise BrokerError when it does not."""
    from ansible_collections.celeryops.fleet.plugins.module_utils._wait import wait_in_result
    hygiene, opened = _open(params, broker)
    limits = params['max_findings']
    try:
        def probe():
            hygiene.notes = {}
            found = report(hygiene.findings(), hygiene.notes, broker.transport)
            return not threshold_problems(found['summary'], limits), found

        def reconnect():
            for thing in opened:
                thing.reconnect()
        if params['wait'] and limits:
            found = wait_in_result(result, probe, params, lambda f: threshold_problems(f['summary'], limits)[0][1]
                                   if f else 'no answer', dict.update, reconnect=reconnect)
        else:
            found = probe()[1]
    finally:
        for thing in opened:
            thing.close()
    result.update(found)
    problems = threshold_problems(found['summary'], limits)
    if problems:
        raise BrokerError(problems[0][1], option='max_findings')


# -- clean-up (celery_broker) ---------------------------------------------------------------------

CLEAN_KINDS = ('orphan_reply', 'stale_event_queue')

# Deletes the lists of one orphaned reply queue only if it still is one (is_orphan, at this instant): not bound
# again, or bound but still untouched for orphan_after seconds; and only lists (a key of another type under the
# name is left alone). KEYS: the n lists, then the two binding sets of the reply exchange. ARGV: n, orphan_after,
# the binding members that would bind the queue. Returns the replies deleted, or -1 (in use) / -2 (not a list).
_DELETE_ORPHAN = """
local n = tonumber(ARGV[1])
local bound = false
for s = n + 1, n + 2 do
  for m = 3, #ARGV do
    if redis.call('SISMEMBER', KEYS[s], ARGV[m]) == 1 then bound = true end
  end
end
for i = 1, n do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'list' and kind ~= 'none' then return -2 end
  if kind == 'list' and bound then
    local idle = redis.pcall('OBJECT', 'IDLETIME', KEYS[i])
    if type(idle) ~= 'number' or idle < tonumber(ARGV[2]) then return -1 end
  end
end
local replies = 0
for i = 1, n do replies = replies + redis.call('LLEN', KEYS[i]) end
redis.call('UNLINK', unpack(KEYS, 1, n))
return replies
"""


def cleanup_argument_spec():
    spec = hygiene_argument_spec()
    out = dict((name, spec[name]) for name in ('visibility_timeout', 'orphan_after', 'expected_nodes', 'expected_count',
                                               'timeout'))
    out.update(
        state=dict(type='str', default='cleaned', choices=['cleaned']),
        kinds=dict(type='list', elements='str', choices=list(CLEAN_KINDS), default=[]),
        restore_overdue=dict(type='bool', default=False),
    )
    return out


def check_cleanup_params(params):
    for option in ('visibility_timeout', 'orphan_after', 'timeout'):
        check_seconds(params[option], option)
    if params['expected_count'] is not None and params['expected_count'] < 0:
        raise OptionError('expected_count must be 0 or more, got %d' % params['expected_count'], option='expected_count')
    if params['expected_nodes'] is not None and not params['expected_nodes']:
        raise OptionError('expected_nodes is empty: omit it or name at least one node', option='expected_nodes')
    if not params['kinds'] and not params['restore_overdue']:
        raise OptionError('nothing to do: give kinds (%s) or restore_overdue: true' % ', '.join(CLEAN_KINDS),
                          option='kinds')


def cleanup_diff(findings, cleaned):
    """before/after: the targeted findings' names per kind (and the overdue ids), then what is left."""
    before, after = {}, {}
    gone = set((c['kind'], c['name']) for c in cleaned)
    for item in findings:
        if item['kind'] == 'overdue_unacked':
            continue
        before.setdefault(item['kind'], []).append(item['name'])
        if (item['kind'], item['name']) not in gone:
            after.setdefault(item['kind'], []).append(item['name'])
    return dict(before=before, after=after)


def _cleanup_redis(params, hygiene, check_mode, result):
    from ansible_collections.celeryops.fleet.plugins.module_utils._redis_queues import priority_step, restore_payload
    layout, queues = hygiene.layout, hygiene.queues
    bindings = queues.bindings()
    kinds = params['kinds']
    if 'orphan_reply' in kinds:
        found = hygiene.orphan_replies(bindings)
        result['findings'] += found
        bound = dict()
        for routing_key, queue in bindings.get(REPLY_EXCHANGE, ()):
            bound.setdefault(queue, set()).add(layout.binding_member(routing_key, queue))
        script = None if check_mode else queues.connection.script(_DELETE_ORPHAN)
        for item in found:
            queue = item['name']
            lists = [key if isinstance(key, bytes) else key.encode('utf-8') for key in hygiene.orphan_lists[queue]]
            lists += [key.encode('utf-8') for _step, key in layout.keys(queue) if key.encode('utf-8') not in lists]
            members = sorted(bound.get(queue, set()) | set([layout.binding_member(queue[:-len(REPLY_SUFFIX)], queue)]))
            row = dict(kind='orphan_reply', name=queue, count=item['count'], bytes=item['bytes'])
            if not check_mode:
                gone = hygiene.call(script, keys=lists + [layout.binding_key(REPLY_EXCHANGE),
                                                          layout.permanent_binding_key(REPLY_EXCHANGE)],
                                    args=[len(lists), params['orphan_after']] + members)
                if gone < 0:
                    result['kept'].append(dict(kind='orphan_reply', name=queue, reason=(
                        'bound again and touched within orphan_after: a client reads it' if gone == -1 else
                        'a key of its name is no longer a list')))
                    continue
                row['count'] = gone
            result['cleaned'].append(row)
    if params['restore_overdue']:
        found = hygiene.overdue(bindings)
        result['findings'] += found
        result.update(nodes=hygiene.notes['nodes'], missing=hygiene.notes['missing'])
        now = hygiene._server_time()
        for entry in hygiene.overdue_entries:
            tag = _text(entry['tag'])
            row = dict(id=entry['id'], queue=entry['queue'], queues=entry['queues'], delivery_tag=tag,
                       held_seconds=round(entry['age'], 3))
            if not entry['queues']:
                result['not_restored'].append(dict(row, reason='no queue is bound for its exchange and routing key'))
                continue
            value = hygiene.call(hygiene.client.hget, layout.unacked, entry['tag'])
            message = restore_payload(value) if value is not None else None
            if message is None:
                result['not_restored'].append(dict(row, reason='gone from unacked meanwhile (acknowledged or restored)'))
                continue
            row['priority_step'] = priority_step(message, layout.steps)
            if not check_mode and not queues.restore_held(entry['tag'], value,
                                                          now - params['visibility_timeout'], entry['queues']):
                result['not_restored'].append(dict(row, reason='changed meanwhile (acknowledged or restored by a worker)'))
                continue
            result['restored'].append(row)


def _cleanup_amqp(params, hygiene, connection, check_mode, result):
    from ansible_collections.celeryops.fleet.plugins.module_utils._amqp_connection import IN_USE, LOCKED
    found = [f for f in amqp_findings(hygiene.queue_records(), []) if f['kind'] in params['kinds']]
    result['findings'] += found
    for item in found:
        name = item['name']
        kept = None
        counts = connection.declare_passive(name)   # real time: the management API's counts lag
        if counts is None:
            kept = 'gone meanwhile'
        elif counts == LOCKED:
            kept = 'exclusive to a live connection'
        elif counts[1]:
            kept = 'a consumer is on it now (%d)' % counts[1]
        count = counts[0] if isinstance(counts, tuple) else None
        if kept is None and not check_mode:
            count = connection.delete_unused(name)
            kept = {None: 'gone meanwhile', IN_USE: 'a consumer attached before the delete (if_unused refused it)',
                    LOCKED: 'exclusive to a live connection'}.get(count)
        if kept is not None:
            result['kept'].append(dict(kind=item['kind'], name=name, reason=kept))
        else:
            result['cleaned'].append(dict(kind=item['kind'], name=name, count=count, bytes=item['bytes']))


def broker_cleanup(params, broker, check_mode, result):
    """celery_broker: delete the findings of ``kinds`` and restore overdue unacked messages; fill ``result``
    (findings, cleaned, kept, restored, not_restored, diff, changed). Each deletion and restore re-checks, at that
    instant and on the broker, that it still applies."""
    result.update(findings=[], cleaned=[], kept=[], restored=[], not_restored=[])
    if broker.transport == 'redis':
        hygiene, opened = _open(params, broker)
        try:
            _cleanup_redis(params, hygiene, check_mode, result)
        finally:
            for thing in opened:
                thing.close()
    else:
        if params['restore_overdue']:
            raise OptionError('restore_overdue is for Redis: RabbitMQ requeues what a consumer held as soon as its '
                              'connection closes', option='restore_overdue')
        from ansible_collections.celeryops.fleet.plugins.module_utils._amqp_connection import AmqpConnection
        from ansible_collections.celeryops.fleet.plugins.module_utils._queues import open_management
        management = open_management(params, broker)
        connection = AmqpConnection(broker)
        try:
            _cleanup_amqp(params, AmqpHygiene(params, broker, management, None), connection, check_mode, result)
        finally:
            connection.close()
    result['diff'] = cleanup_diff(result['findings'], result['cleaned'])
    if params['restore_overdue']:
        result['diff']['before']['overdue_unacked'] = sorted(e['id'] or e['delivery_tag'] for e in
                                                             result['restored'] + result['not_restored'])
        result['diff']['after']['overdue_unacked'] = sorted(e['id'] or e['delivery_tag'] for e in result['not_restored'])
    result['changed'] = bool(result['cleaned'] or result['restored'])
