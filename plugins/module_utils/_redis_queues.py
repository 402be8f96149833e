# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kombu's Redis layout, read and changed the way kombu itself would.

- A queue is a list per priority step: the bare name for step 0, ``name + sep + step``
  otherwise. Messages are LPUSHed and RPOPed, so the next to run is at the tail, and
  consumers empty lower steps first.
- ``global_keyprefix`` prefixes every key; kombu's prefixing client misses some commands,
  so keys are always built here in full.
- Messages held by workers live in one global ``unacked`` hash (delivery tag -> JSON
  ``[message, exchange, routing_key]``); the ``_kombu.binding.<exchange>`` sets (members
  ``routing_key + sep + pattern + sep + queue``) tell which queue they came from. kombu 5.7
  also keeps ``_kombu.binding_permanent.<exchange>`` with the same members. The pattern is empty but for a
  topic exchange (kombu's regular expression of the routing key); Redis keeps no exchange type.
- Lists and the unacked hash are read in pieces bounded by bytes as well as by elements (CHUNK_BYTES), so the
  module's memory does not grow with the backlog.
- On a master named by Sentinel, each purge, trim or removal ends with Redis WAIT (see replicate()): Redis replies
  before it replicates, so a removal the master confirmed can come back after a failover to a replica that had not
  got it. Plain redis:// is not waited for: nothing promotes its replica behind the module's back.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from functools import lru_cache

from ansible.module_utils.common.warnings import warn as ansible_warn

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, Refused
from ansible_collections.celeryops.fleet.plugins.module_utils._celery_names import is_internal_queue
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import (
    NotAnEnvelope, UNKNOWN_TASK, count_task_names, decode_envelope, task_name_of)
from ansible_collections.celeryops.fleet.plugins.module_utils._redis_connection import RedisConnection, WatchError

DEFAULT_SEP = '\x06\x16'
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
BINDING_PREFIXES = ('_kombu.binding.', '_kombu.binding_permanent.')
# kombu 5.7: when each binding set was last renewed (a zset), so that stale ones can be swept.
BINDING_DEADLINES = '_kombu.binding_deadlines'

# Keys a SCAN step looks at: a keyspace of millions (result backend keys) in few round trips,
# each step still short for the server.
SCAN_COUNT = 5000
# Elements read per LRANGE at most: small enough that no single command holds the server for long.
READ_CHUNK = 2000
# Elements removed per LTRIM when trimming, for the same reason.
TRIM_CHUNK = 10000
# Bytes read per reply at most, so that memory does not grow with the backlog: a read takes as many elements
# as fit if they are as large as the largest of the read before (one, if it alone is larger). The first read
# of a list takes one element, and each read at most GROWTH times as many as the one before.
CHUNK_BYTES = 4 * 1024 * 1024
GROWTH = 8
# Attempts at a filtered purge of a queue that producers or consumers keep changing.
REWRITE_ATTEMPTS = 5
# A filtered purge builds the kept list under a key of its own; should the module die, the key expires.
# Each chunk pushed renews it.
FILTER_KEY = '_celeryops.filter.'
FILTER_TTL_MS = 10 * 60 * 1000

# Many small reads in one round trip: for a thousand queues, packing and parsing thousands
# of pipelined commands costs more in redis-py than the server spends on them.
_LLEN_ALL = "local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('LLEN', key) end return out"
_SMEMBERS_ALL = "local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('SMEMBERS', key) end return out"
# The fields of a hash and the length of each value, without the values (the unacked hash holds whole messages).
_HASH_SIZES = ("local out = {} for i, field in ipairs(redis.call('HKEYS', KEYS[1])) do "
               "out[2 * i - 1] = field out[2 * i] = redis.call('HSTRLEN', KEYS[1], field) end return out")

# restore_held: KEYS unacked, unacked_index, the lists; ARGV tag, the entry as read, latest score, the message.
_RESTORE_HELD = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[4]) end
return 1
"""
# kombu's bounds of a message's priority (virtual transport): anything else, or none, is 0.
MIN_PRIORITY, MAX_PRIORITY = 0, 9


def priority_step(message, steps):
    """The priority step whose list kombu puts ``message`` (a decoded envelope) in: its properties' priority
    bounded to 0..9, rounded down to a step of ``steps`` (sorted, starting at 0)."""
    try:
        priority = max(min(int(message['properties']['priority']), MAX_PRIORITY), MIN_PRIORITY)
    except (TypeError, ValueError, KeyError, OverflowError):
        priority = 0
    return [step for step in steps if step <= priority][-1]


def restore_payload(value):
    """The message of an unacked entry (kombu's JSON [message, exchange, routing_key]) as it goes back to a queue:
    marked redelivered in its headers and delivery_info where it has them; None for an entry that is not that."""
    try:
        entry = json.loads(value)
    except (ValueError, TypeError, RecursionError):
        return None
    if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], dict)):
        return None
    message = entry[0]
    for path in (('headers',), ('properties', 'delivery_info')):
        table = message
        for part in path:
            table = table.get(part) if isinstance(table, dict) else None
        if isinstance(table, dict):
            table['redelivered'] = True
    return message


class RedisLayout(object):
    """Key names of kombu's Redis transport under the given transport options."""

    def __init__(self, global_keyprefix='', priority_steps=DEFAULT_PRIORITY_STEPS, sep=DEFAULT_SEP):
        self.prefix = global_keyprefix or ''
        self.steps = sorted(set(int(s) for s in priority_steps))
        if not self.steps or self.steps[0] != 0:
            # kombu always has step 0: the bare queue name.
            self.steps = [0] + [s for s in self.steps if s > 0]
        self.sep = sep
        self._sub_list = re.compile(re.escape(sep) + '([0-9]+)')

    def key(self, queue, step=0):
        return self.prefix + (queue + self.sep + str(step) if step else queue)

    def keys(self, queue):
        """(step, key) for every priority step, in the order consumers empty them."""
        return [(step, self.key(queue, step)) for step in self.steps]

    def priority_list_of(self, name):
        """(queue, step) when kombu reads ``name`` as a priority list of another queue (``queue + sep + step``)."""
        match = self._sub_list.search(name)
        return (name[:match.start()], match.group(1)) if match else None

    def check_queue_name(self, name):
        """Refuse a name kombu reads as another queue's priority list; before anything is read or changed."""
        misread = self.priority_list_of(name)
        if misread:
            raise Refused('queues: %r holds the priority separator sep (%r) followed by a digit: kombu keeps '
                          'priority step %s of queue %r under that name, so it cannot name a queue of its own'
                          % (name, self.sep, misread[1], misread[0]), option='queues')

    @property
    def unacked(self):
        return self.prefix + 'unacked'

    @property
    def unacked_index(self):
        """kombu's zset of the unacked hash's delivery tags, scored by delivery time."""
        return self.prefix + 'unacked_index'

    def binding_key(self, exchange):
        """The set of ``exchange``'s bindings (members: see binding_member)."""
        return self.prefix + BINDING_PREFIXES[0] + exchange

    def permanent_binding_key(self, exchange):
        """kombu 5.7's second set of ``exchange``'s bindings, with the same members."""
        return self.prefix + BINDING_PREFIXES[1] + exchange

    @property
    def binding_deadlines(self):
        return self.prefix + BINDING_DEADLINES

    def binding_member(self, routing_key, queue, pattern=''):
        """A member of a binding set: ``routing_key + sep + pattern + sep + queue``, split by every worker."""
        return self.sep.join([routing_key, pattern, queue])

    def fanout_channel(self, db, exchange):
        """The PUB/SUB channel of a fanout exchange (kombu's fanout prefix ``/<db>.``), as the workers see it."""
        return '%s/%d.%s' % (self.prefix, db, exchange)

    def binding_pattern(self):
        """One SCAN pattern for both kinds of binding sets: they share their start. It also matches
        kombu's _kombu.binding_deadlines zset, which exchange_of() leaves out."""
        return _glob_escape(self.prefix + os.path.commonprefix(BINDING_PREFIXES)) + '*'

    def exchange_of(self, binding_key):
        for p in BINDING_PREFIXES:
            full = self.prefix + p
            if binding_key.startswith(full):
                return binding_key[len(full):]
        return None


class Bindings(dict):
    """exchange -> [(routing_key, queue)], and ``topic``: the exchanges whose members carry a topic pattern."""

    def __init__(self, *args, **kwargs):
        dict.__init__(self, *args, **kwargs)
        self.topic = set()


def route(bindings, exchange, routing_key):
    """The queues kombu delivers a message of ``exchange`` with ``routing_key`` to, and restores a held one to
    (kombu/transport/virtual/exchange.py). Redis keeps no exchange type: an exchange whose members carry a
    pattern is a topic one; any other routes by equal routing key (direct) or, when no key is equal, to every
    queue bound (fanout: kombu never delivers an unmatched key of a direct exchange)."""
    if not exchange:
        return [routing_key]  # the default exchange routes by queue name
    table = bindings.get(exchange, ())
    if exchange in bindings.topic:
        return [queue for binding_key, queue in table if topic_matches(binding_key, routing_key)]
    return [queue for binding_key, queue in table if binding_key == routing_key] or [queue for _key, queue in table]


def _not_dot(char):
    return char != '.'


def _not_newline(char):
    return char != '\n'


@lru_cache(maxsize=1024)
def _topic_steps(binding_key):
    """kombu's topic pattern of a binding key as steps (test of one character, repeated?), or None where Python
    refuses kombu's pattern. kombu joins the words with '\\.' between '^' and '$'; a word '*' is '[^\\.]+', a
    word '#' is '.*?', any other word its own characters, where a '*' repeats the character before it."""
    steps = []
    for index, word in enumerate(binding_key.split('.')):
        if index:
            steps.append(['.'.__eq__, False])
        if word == '*':
            steps += [[_not_dot, False], [_not_dot, True]]
        elif word == '#':
            steps.append([_not_newline, True])
        else:
            for char in word:
                if char != '*':
                    steps.append([char.__eq__, False])
                elif not steps or steps[-1][1]:
                    return None  # "nothing to repeat", "multiple repeat": kombu cannot route with it
                else:
                    steps[-1][1] = True
    return tuple((test, repeat) for test, repeat in steps)


def topic_matches(binding_key, routing_key):
    """Whether kombu's topic exchange routes ``routing_key`` through a binding of ``binding_key``: its regular
    expression, matched here in linear time (a pattern of many '#' would make a regex backtrack for ever)."""
    steps = _topic_steps(binding_key)
    if steps is None:
        return False
    end = len(steps)

    def closure(states):
        out, todo = set(), list(states)
        while todo:
            state = todo.pop()
            if state not in out:
                out.add(state)
                if state < end and steps[state][1]:
                    todo.append(state + 1)
        return out

    states = closure([0])
    last = len(routing_key) - 1
    for position, char in enumerate(routing_key):
        if position == last and char == '\n' and end in states:
            return True  # '$' also matches before a final newline
        states = closure([state if steps[state][1] else state + 1
                          for state in states if state < end and steps[state][0](char)])
        if not states:
            return False
    return end in states


def _next_length(length, chunk):
    """Elements to read after ``chunk`` (of ``length`` asked): see CHUNK_BYTES."""
    largest = max(1, *map(len, chunk))
    return max(1, min(READ_CHUNK, length * GROWTH, CHUNK_BYTES // largest))


def _glob_escape(text):
    return ''.join('\\' + c if c in '*?[]\\' else c for c in text)


def _text(value):
    return value.decode('utf-8', 'replace') if isinstance(value, bytes) else value


class RedisQueues(object):
    """Queue state and changes on a Redis broker."""

    transport = 'redis'
    # Nothing here needs the management API of RabbitMQ.
    management_error = None

    def __init__(self, broker, layout):
        self.connection = RedisConnection(broker)
        self.broker = broker
        self.layout = layout
        self.client = self.connection.client   # redis-py's, called through self.call
        self.call = self.connection.call
        self._llen_all = self.connection.script(_LLEN_ALL)
        self._smembers_all = self.connection.script(_SMEMBERS_ALL)
        self._hash_sizes = self.connection.script(_HASH_SIZES)
        self._restore_held = self.connection.script(_RESTORE_HELD)
        # replicate(): the connection of the last write that removed something, the cap on WAIT's timeout (the
        # module's own timeout, if it has one) and where its warning goes (the module's warnings).
        self._writer = None
        self.replica_wait = None
        self.warn = ansible_warn

    def close(self):
        self.connection.close()

    def reconnect(self):
        """Drop the pooled connections and check that the broker answers again."""
        self.connection.reconnect()

    # -- reading ----------------------------------------------------------------------------

    def bindings(self):
        """Bindings: exchange -> list of (routing_key, queue), from both kinds of binding sets."""
        found = self.call(lambda: list(self.client.scan_iter(match=self.layout.binding_pattern(), count=SCAN_COUNT)))
        exchange_of = dict((key, self.layout.exchange_of(_text(key))) for key in found)
        keys = [key for key in found if exchange_of[key] is not None]
        table, out = {}, Bindings()  # table: exchange -> {(routing_key, queue): None}, a set that keeps the order read
        for key, members in zip(keys, self.call(self._smembers_all, keys=keys) if keys else []):
            entries = table.setdefault(exchange_of[key], {})
            for member in members:
                parts = _text(member).split(self.layout.sep)
                if len(parts) == 3:
                    entries[(parts[0], parts[2])] = None
                    if parts[1]:
                        out.topic.add(exchange_of[key])
        out.update((exchange, list(entries)) for exchange, entries in table.items())
        return out

    def discover(self, include_internal=False, bindings=None):
        """Names of the queues kombu has bound on this broker (in ``bindings``, if read already)."""
        names = set()
        for exchange, entries in (self.bindings() if bindings is None else bindings).items():
            for _routing_key, queue in entries:
                if queue and (include_internal or not is_internal_queue(queue, exchange)):
                    names.add(queue)
        return sorted(names)

    def ready(self, name):
        """Ready messages of one queue, every priority step."""
        return sum(self.depths([name])[name].values())

    def depths(self, names):
        """name -> {step: length} in one round trip. The first read of the queues a module is given:
        a name that is another queue's priority list is refused here."""
        for name in names:
            self.layout.check_queue_name(name)
        keys = [key for name in names for _step, key in self.layout.keys(name)]
        lengths = self.call(self._llen_all, keys=keys) if keys else []
        out, i = {}, 0
        for name in names:
            per_step = {}
            for step, _key in self.layout.keys(name):
                per_step[step] = lengths[i]
                i += 1
            out[name] = per_step
        return out

    def unacked_by_queue(self, bindings=None):
        """queue -> number of messages held unacknowledged by workers; '' for unattributable ones."""
        counts, routes = {}, {}  # routes: (exchange, routing_key) -> queues, worked out once
        for held in self._held_routes():
            if held not in routes:
                if bindings is None:
                    bindings = self.bindings()
                routes[held] = (route(bindings, *held) if held else None) or ['']
            for queue in routes[held]:
                counts[queue] = counts.get(queue, 0) + 1
        return counts

    def _held_routes(self):
        """(exchange, routing_key) of each entry of the unacked hash (kombu's [message, exchange, routing_key]),
        None for one that is not that."""
        for _field, value in self.held_entries():
            yield _route_of(value)

    def held_entries(self):
        """(delivery tag, raw value) of each entry of the unacked hash; the values are fetched in batches of
        at most CHUNK_BYTES (an entry that went meanwhile has the value None)."""
        key = self.layout.unacked
        sizes = self.call(self._hash_sizes, keys=[key])
        batch, size = [], 0
        for field, length in zip(sizes[0::2], sizes[1::2]):
            if batch and size + length > CHUNK_BYTES:
                yield from zip(batch, self.call(self.client.hmget, key, batch))
                batch, size = [], 0
            batch.append(field)
            size += length
        if batch:
            yield from zip(batch, self.call(self.client.hmget, key, batch))

    def remove_held(self, tags):
        """Delete entries of the unacked hash (and their unacked_index scores) in one transaction; the number
        deleted (an entry its worker acknowledged meanwhile is gone already)."""
        if not tags:
            return 0
        pipe = self.connection.pipeline(transaction=True)
        pipe.hdel(self.layout.unacked, *tags)
        pipe.zrem(self.layout.unacked_index, *tags)
        self._writer = None
        deleted = self._write(pipe, lambda out: out[0])[0]
        if deleted:
            self.replicate('removal of %d held messages' % deleted)
        return deleted

    def restore_held(self, tag, value, not_after, queues):
        """Put one held message back at the head of ``queues`` (those kombu routes it to) and drop it from the
        unacked hash and index, in one script: only while the entry is still ``value`` (as read) and its
        unacked_index score at most ``not_after`` (server time), else nothing changes (a worker acknowledged or
        restored it meanwhile). What kombu's restore_by_tag does for an entry past its visibility timeout: the
        message marked redelivered, pushed at the tail (the next to run) of the list of its priority step.
        True when it was restored."""
        message = restore_payload(value)
        if message is None or not queues:
            return False
        step = priority_step(message, self.layout.steps)
        keys = [self.layout.unacked, self.layout.unacked_index] + [self.layout.key(queue, step) for queue in queues]
        return bool(self.call(self._restore_held, keys=keys, args=[tag, value, repr(float(not_after)),
                                                                   json.dumps(message)]))

    def elements(self, name):
        """(priority step, raw element) of every ready message of a queue, in the order they would run."""
        for step, key in self.layout.keys(name):
            for chunk in self._chunks(key, from_tail=True):
                for raw in chunk:
                    yield step, raw

    def peek(self, name, count):
        """The next ``count`` messages to run, decoded, in run order."""
        out = []
        for step, key in self.layout.keys(name):
            if len(out) >= count:
                break
            for chunk in self._chunks(key, limit=count - len(out), from_tail=True):
                out.extend(_decoded(raw, step) for raw in chunk)
        return out

    def _chunks(self, key, limit=None, from_tail=False):
        """The elements of one list, head to tail (``from_tail``: tail to head, each chunk too), at most
        ``limit`` of them, in chunks of at most READ_CHUNK elements and about CHUNK_BYTES.

        The next LRANGE is sent before a chunk is handed out, so Redis builds and sends it while
        the caller works on this one: a backlog is read 1.5 to 1.7 times faster than with one
        command at a time.
        """
        if limit is not None and limit <= 0:
            return
        stream = self.connection.stream('LRANGE')

        def send(done, length):
            span = (-(done + length), -(done + 1)) if from_tail else (done, done + length - 1)
            stream.send(key, *span)
        try:
            done, length = 0, 1
            send(done, length)
            while True:
                chunk = stream.read()
                done += len(chunk)
                more = len(chunk) == length and (limit is None or done < limit)
                if more:
                    length = _next_length(length, chunk)
                    if limit is not None:
                        length = min(length, limit - done)
                    send(done, length)
                if chunk:
                    yield chunk[::-1] if from_tail else chunk
                if not more:
                    return
        finally:
            stream.close()

    def breakdown(self, name):
        """task name -> number of ready messages, over every priority step."""
        counts = {}
        for _step, key in self.layout.keys(name):
            for chunk in self._chunks(key):
                for task, n in count_task_names(chunk).items():
                    counts[task] = counts.get(task, 0) + n
        return counts

    # -- changing ---------------------------------------------------------------------------

    def purge(self, name, task_names=None, check_mode=False):
        """Remove ready messages (of ``task_names`` only, if given). Returns the number removed."""
        if task_names:
            names = set(task_names)
            return len(self.purge_matching(name, lambda raw: task_name_of(raw) in names, check_mode))
        removed = 0
        self._writer = None
        for _step, key in self.layout.keys(name):
            if check_mode:
                removed += self.call(self.client.llen, key)
            else:
                # LLEN and UNLINK in one transaction: the count is exactly what went, and
                # UNLINK frees a long list in the background instead of blocking the server.
                pipe = self.connection.pipeline(transaction=True)
                pipe.llen(key)
                pipe.unlink(key)
                removed += self._write(pipe, lambda out: out[0])[0]
        if removed:
            self.replicate('purge of %r' % name)
        return removed

    def purge_matching(self, name, matcher, check_mode=False):
        """Remove the ready messages (every priority step) for which ``matcher(raw element)`` returns something
        true, keeping the others in their order; returns what it returned for each one removed (in check mode,
        that would be removed). ``matcher`` may be called more than once for an element (see _purge_where)."""
        removed = []
        self._writer = None
        for _step, key in self.layout.keys(name):
            removed += self._purge_where(key, matcher, check_mode)
        if removed and not check_mode:
            self.replicate('filtered purge of %r' % name)
        return removed

    def _purge_where(self, key, matcher, check_mode):
        """Drop the elements ``matcher`` picks from one list, keeping the others in order; what it returned for
        each one dropped.

        Streamed under WATCH on the list: from the first dropped element on, the kept ones go chunk by
        chunk to a key of our own (after a copy of those before it), which one MULTI then renames over
        the list, with the list's own TTL or none (or the list is unlinked when nothing is kept). If a
        producer or a consumer touched the list meanwhile, nothing is changed, our key goes, and the pass
        is retried.
        """
        for _attempt in range(REWRITE_ATTEMPTS):
            pipe = self.connection.pipeline(transaction=True)
            kept_key = None
            try:
                self.call(pipe.watch, key)
                read = kept = 0
                removed = []
                for chunk in self._chunks(key):
                    picks = [matcher(raw) for raw in chunk]
                    keep = [raw for raw, pick in zip(chunk, picks) if not pick]
                    if len(keep) < len(chunk) and kept_key is None and not check_mode:
                        kept_key = self.layout.prefix + FILTER_KEY + uuid.uuid4().hex
                        for before in self._chunks(key, limit=read):
                            kept += self._push(kept_key, before)
                    if kept_key is not None and keep:
                        kept += self._push(kept_key, keep)
                    removed += [pick for pick in picks if pick]
                    read += len(chunk)
                if check_mode or not removed:
                    return removed
                ttl = self.call(self.client.pttl, key)
                pipe.multi()
                if kept:
                    pipe.rename(kept_key, key)
                    if ttl > 0:
                        pipe.pexpire(key, ttl)
                    else:
                        pipe.persist(key)
                else:
                    pipe.unlink(key)
                self._write(pipe, lambda out: True)
                kept_key = None  # it is the list now
                return removed
            except WatchError:
                continue
            finally:
                pipe.reset()
                if kept_key is not None and not self.connection.broken:
                    self.call(self.client.unlink, kept_key)
        raise BrokerError('the queue key %r kept changing while it was being filtered (%d attempts); nothing was '
                          'removed from it. Stop its producers or consumers, or purge without a filter'
                          % (_text(key), REWRITE_ATTEMPTS), endpoint=self.broker.endpoint)

    def _push(self, key, elements):
        """Append to one of our keys, renewing its expiry; the number appended."""
        pipe = self.connection.pipeline(transaction=False)
        pipe.rpush(key, *elements)
        pipe.pexpire(key, FILTER_TTL_MS)
        self.call(pipe.execute)
        return len(elements)

    def trim(self, name, keep, drop='oldest', check_mode=False):
        """Remove messages until ``keep`` are left, from the front of the run order ('oldest')
        or from its back ('newest'). Returns the number removed."""
        depths = self.depths([name])[name]
        excess = sum(depths.values()) - keep
        if excess <= 0:
            return 0
        if check_mode:
            return excess
        keys = self.layout.keys(name)
        if drop == 'newest':
            keys = list(reversed(keys))
        removed = 0
        self._writer = None
        for step, key in keys:
            while excess > 0:
                n = min(excess, TRIM_CHUNK, depths[step])
                if n <= 0:
                    break
                pipe = self.connection.pipeline(transaction=True)
                pipe.llen(key)
                if drop == 'newest':
                    pipe.ltrim(key, n, -1)  # the head holds the newest
                else:
                    pipe.ltrim(key, 0, -(n + 1))  # the tail holds the next to run
                pipe.llen(key)
                before, _ok, after = self._write(pipe, lambda out: out[0] - out[2])
                gone = before - after
                removed += gone
                excess -= gone
                depths[step] = after
                if gone == 0:
                    break
        if removed:
            self.replicate('trim of %r' % name)
        return removed

    # -- replication (Sentinel) ---------------------------------------------------------------

    def _write(self, pipe, changed):
        """Run a transaction ``pipe`` that removes messages; its replies. When ``changed(replies)`` says it removed
        something, its connection is the one replicate() sends WAIT on."""
        if pipe.connection is None:   # a pipeline under WATCH holds its connection already
            pool = self.client.connection_pool
            try:
                pipe.connection = self.call(pool.get_connection)
            except TypeError:  # redis-py before 5.3 wants a command name
                pipe.connection = self.call(pool.get_connection, 'MULTI')
        wire = pipe.connection
        out = self.call(pipe.execute)
        if changed(out):
            self._writer = wire
        return out

    def replicate(self, what):
        """On a master named by Sentinel: WAIT until the replicas it reports connected (at least 1) acknowledge the
        removals so far, for at most half connect_timeout (a longer block would read as a dead server) and at most
        ``replica_wait``; warn, naming how many did, when fewer than that did. The number that did, or None (not
        through Sentinel, or nothing written).

        WAIT counts the replicas that got the last write of the connection it is sent on (Redis 7 moves that mark
        only on a write): it goes on the connection of the last removal, which covers every earlier one too, as
        replication keeps their order. That connection is back in the pool, idle: nothing else runs meanwhile."""
        wire, self._writer = self._writer, None
        if wire is None or not self.broker.sentinels:
            return None
        seconds = self.broker.timeout / 2.0
        if self.replica_wait:
            seconds = min(seconds, self.replica_wait)
        try:
            replicas = self.call(self.client.info, 'replication').get('connected_slaves') or 0
            wanted = max(1, int(replicas))
            self.call(wire.send_command, 'WAIT', wanted, max(1, int(seconds * 1000)))
            acknowledged = int(self.call(self.client.parse_response, wire, 'WAIT'))
        except BrokerError as error:
            if error.lost:
                raise
            self.warn('%s on %s: could not confirm that a replica has it (WAIT failed: %s); if Sentinel fails over '
                      'before the replicas catch up, the removed messages may come back'
                      % (what, self.broker.endpoint, error.msg))
            return None
        if acknowledged < wanted:
            self.warn('%s on %s: %d of %d replicas acknowledged it within %ss (Redis WAIT); if Sentinel fails over to '
                      'a replica that has not got it, the removed messages may come back'
                      % (what, self.broker.endpoint, acknowledged, wanted, round(seconds, 3)))
        return acknowledged


def _route_of(value):
    """(exchange, routing_key) of an unacked entry, None if it is not kombu's [message, exchange, routing_key]
    with both strings (or went meanwhile)."""
    try:
        entry = json.loads(value)
    except (ValueError, TypeError, RecursionError):
        return None
    if isinstance(entry, list) and len(entry) == 3 and all(isinstance(part, str) for part in entry[1:]):
        return entry[1], entry[2]
    return None


def _decoded(raw, step):
    try:
        message = decode_envelope(raw)
    except NotAnEnvelope as exc:
        message = dict(task=UNKNOWN_TASK, error=str(exc))
    message['priority_step'] = step
    return message
