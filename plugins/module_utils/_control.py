# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Celery remote control without the user's app: the pidbox protocol `celery inspect` speaks.

A request is a JSON message on the fanout exchange ``celery.pidbox``; every worker it is
meant for answers ``{node: value}`` through the direct exchange ``reply.celery.pidbox`` to
a reply queue of ours, with the request's ticket in a header. It is spoken here directly,
over the same redis-py and pika connections the queue modules use: kombu alone takes
longer to import than a whole health check should take.

Celery's own reply collection waits until no reply came for ``timeout`` seconds, unless it
knows how many to expect. Here every command of a request is sent at once, replies for all
of them are read from one reply queue, and collection stops as soon as every expected node
has answered every command; ``timeout`` is a total budget. Replies are kept per node and
counted, so two workers with the same name show as a duplicate instead of merging.

Anything on the broker can answer (a rogue worker, any client of the reply exchange): a
reply that is not JSON, not a kombu message, or not shaped as Celery shapes that command's
reply is counted as undecodable and skipped.
"""

from __future__ import annotations

import fnmatch
import re
import time
import uuid

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import OptionError
from ansible_collections.celeryops.fleet.plugins.module_utils._celery_names import (
    PIDBOX_EXCHANGE, REPLY_EXCHANGE, REPLY_QUEUE_EXPIRES, REPLY_QUEUE_TTL, reply_queue)
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import (
    NotAnEnvelope, json_body, load_envelope, make_envelope)

# Inspect commands and the arguments `celery inspect` sends with them.
INSPECT_COMMANDS = {
    'ping': {},
    'stats': {},
    'active': {},
    'reserved': {},
    'scheduled': {},
    'registered': {'taskinfoitems': None},
    'active_queues': {},
    'revoked': {},
    'conf': {'with_defaults': False},
    'memdump': {'samples': 10},
}
# After every expected node answered, a moment more to catch a second worker of the same name:
# as long again as the first complete set of answers took, within these bounds.
DUPLICATE_GRACE = 0.1
MIN_DUPLICATE_GRACE = 0.02
# The type of each inspect reply as Celery sends it; any other command's reply is an
# acknowledgement, {'ok': text} or {'error': text}.
REPLY_TYPES = {'stats': dict, 'conf': dict, 'memdump': str, 'active': list, 'reserved': list, 'scheduled': list,
               'active_queues': list, 'registered': list, 'revoked': list}
# Control commands newer than the oldest Celery the collection supports (5.2), and the release that brought each.
COMMANDS_SINCE = {'revoke_by_stamped_headers': '5.3'}


def plain_error(command, value):
    """A worker's reply to ``command``, its error said plainly when the worker has no such command: kombu's pidbox
    answers one with the repr of the KeyError its handler lookup raised, which names neither a command nor a version."""
    if not isinstance(value, dict) or value.get('error') not in ("KeyError('%s')" % command, 'KeyError("%s")' % command):
        return value
    since = COMMANDS_SINCE.get(command)
    return dict(value, error='the worker has no control command %s%s (it answered %s)'
                % (command, ', which came with Celery %s' % since if since else '', value['error']))


def readable_reply(command, value):
    """Whether ``value`` is shaped as a worker's reply to ``command``, as far as the modules read it."""
    if command not in REPLY_TYPES:
        return isinstance(value, dict) and all(isinstance(value.get(key, ''), str) for key in ('ok', 'error'))
    if not isinstance(value, REPLY_TYPES[command]):
        return False
    if command in ('active', 'reserved', 'scheduled'):
        return all(isinstance(task, dict) for task in value)
    if command == 'active_queues':
        return all(isinstance(queue, dict) and isinstance(queue.get('name'), str) for queue in value)
    if command in ('registered', 'revoked'):
        return all(isinstance(item, str) for item in value)
    if command == 'stats':
        pool = value.get('pool', {})
        return (isinstance(pool, dict) and isinstance(pool.get('processes', []), list)
                and isinstance(pool.get('max-concurrency', 0), int) and isinstance(value.get('autoscaler', {}), dict))
    return True


def is_pattern(name):
    return any(c in name for c in '*?[')


def check_node_names(nodes, option):
    """Node names look like worker1@host; glob patterns (*@host) are taken as they are."""
    for node in nodes or []:
        if not node or not node.strip():
            raise OptionError('%s: a node name is empty' % option, option=option)
        if node != node.strip():
            # It would never match the name a worker answers with.
            raise OptionError("%s: '%s' starts or ends with whitespace" % (option, node), option=option)
        if re.search(r'\[[^\]]*$', node):
            # fnmatch would take the '[' literally and match nothing, silently.
            raise OptionError("%s: '%s' is not a valid pattern: '[' without a closing ']'" % (option, node),
                              option=option)
        if not is_pattern(node) and ('@' not in node or node.startswith('@') or node.endswith('@')):
            raise OptionError("%s: '%s' is not a node name like worker1@host (or a pattern like *@host)"
                              % (option, node), option=option)


class Replies(object):
    """Replies to one request: per command, per node, every value that came (in order)."""

    def __init__(self, commands):
        self.by_command = dict((command, {}) for command in commands)
        self.elapsed = 0.0
        self.undecodable = 0   # replies skipped: not JSON, not a kombu message, or not shaped as Celery's

    def add(self, command, node, value):
        self.by_command[command].setdefault(node, []).append(value)

    def nodes(self, command='ping'):
        return set(self.by_command.get(command, {}))

    def first(self, command):
        """node -> the first value it sent for ``command``."""
        return dict((node, values[0]) for node, values in self.by_command.get(command, {}).items())

    def duplicates(self):
        """Node names that answered one command more than once: two workers share the name."""
        return sorted(set(node for replies in self.by_command.values()
                          for node, values in replies.items() if len(values) > 1))


class Expectation(object):
    """Which nodes should answer: names and glob patterns, and/or a count."""

    def __init__(self, nodes=None, count=None):
        self.names = [n for n in nodes or [] if not is_pattern(n)]
        self.patterns = [n for n in nodes or [] if is_pattern(n)]
        self.count = count

    @property
    def given(self):
        return bool(self.names or self.patterns or self.count is not None)

    def expects(self, node):
        return node in self.names or any(fnmatch.fnmatchcase(node, p) for p in self.patterns)

    def met_by(self, nodes):
        """Whether ``nodes`` is all that can be waited for: every named node, every pattern
        matched, and the count reached. With patterns only and no count it never is (more
        nodes may match), so the whole timeout is used."""
        if not (self.names or self.count is not None):
            return False
        if any(name not in nodes for name in self.names):
            return False
        if any(not any(fnmatch.fnmatchcase(n, p) for n in nodes) for p in self.patterns):
            return False
        if self.count is not None:
            return len(nodes) >= self.count
        return not self.patterns

    def missing(self, nodes):
        out = [name for name in self.names if name not in nodes]
        out += [p for p in self.patterns if not any(fnmatch.fnmatchcase(n, p) for n in nodes)]
        return sorted(out)

    def unexpected(self, nodes):
        if not (self.names or self.patterns):
            return []
        return sorted(n for n in nodes if not self.expects(n))


def _request(command, arguments, destination, ticket=None, reply_to=None):
    """The body of one pidbox request, as kombu's Mailbox writes it."""
    body = {'method': command, 'arguments': arguments or {}, 'destination': destination,
            'pattern': None, 'matcher': None}
    if ticket:
        body.update(ticket=ticket, reply_to={'exchange': REPLY_EXCHANGE, 'routing_key': reply_to})
    return body


class _RedisMailbox(object):
    """Requests PUBLISHed on the channel the workers subscribe to (kombu's fanout prefix
    ``/<db>.``); replies LPUSHed by the workers into the list that the reply exchange's
    binding set points at, which is ours for the duration of the run.

    The binding is written with the workers' ``sep``: a worker splits every member of the set
    into three fields, and one it cannot split fails its reply, to us and to anyone else
    asking through the same exchange (a concurrent ``celery inspect``)."""

    # kombu 5.7 sweeps binding sets whose deadline passed; a client keeps its set's deadline
    # ahead, as kombu's own clients do, where that bookkeeping exists.
    _BIND = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('ZADD', KEYS[2], 'GT', ms + tonumber(ARGV[3]), ARGV[2])
end
"""
    _BINDING_TTL_MS = 3600 * 1000

    def __init__(self, broker, layout):
        from ansible_collections.celeryops.fleet.plugins.module_utils._redis_connection import RedisConnection
        self.connection = RedisConnection(broker)  # connects; maps redis-py's errors
        self.layout = layout
        self.topic = layout.fanout_channel(broker.db, PIDBOX_EXCHANGE)
        self.oid = self.reply_keys = self.member = None

    def publish(self, bodies, expires, reply):
        """Publish request bodies (a list); with ``reply``, they carry our reply queue."""
        if reply and self.oid is None:
            self.oid = str(uuid.uuid4())
            queue = reply_queue(self.oid)
            # A reply goes to the list of its priority step, as any message: every step is read.
            self.reply_keys = [key for _step, key in self.layout.keys(queue)]
            self.member = self.layout.binding_member(self.oid, queue)
        headers = {'clock': 1, 'expires': expires}
        pipe = self.connection.pipeline(transaction=False)
        if reply:
            # Bound again with every request, in the same round trip: a Redis restarted between two
            # requests (redis-py reconnects without a word) has forgotten the binding, and the
            # workers' replies would go nowhere.
            pipe.eval(self._BIND, 2, self.layout.binding_key(REPLY_EXCHANGE), self.layout.binding_deadlines,
                      self.member, REPLY_EXCHANGE, self._BINDING_TTL_MS)
        for body in bodies(self.oid):
            pipe.publish(self.topic, make_envelope(body, headers, PIDBOX_EXCHANGE))
        self.connection.call(pipe.execute)

    def replies(self, wait):
        """[(ticket, body)] of the replies that came within ``wait`` seconds (all that are there)."""
        return [_reply_of(raw) for raw in self.connection.take_all(self.reply_keys, wait)]

    def close(self):
        try:
            if self.oid is not None and not self.connection.broken:
                # What kombu does when the last consumer of an auto-delete queue goes.
                pipe = self.connection.pipeline(transaction=False)
                pipe.srem(self.layout.binding_key(REPLY_EXCHANGE), self.member)
                pipe.srem(self.layout.permanent_binding_key(REPLY_EXCHANGE), self.member)
                pipe.delete(*self.reply_keys)
                pipe.execute()
        except Exception:  # best effort: a reply list left behind holds a few small replies
            pass
        self.connection.close()

    def check(self, timeout, complete):
        """Nothing to do: Redis has no flow control of publishers, and a silent Redis already
        failed the BRPOP by its socket timeout."""


def _reply_of(raw):
    """(ticket, body) of one reply element on Redis; None if it is not a JSON kombu message."""
    try:
        envelope = load_envelope(raw)
    except NotAnEnvelope:
        return None
    headers = envelope.get('headers')
    return _reply(headers.get('ticket') if isinstance(headers, dict) else None, json_body(envelope))


def _reply(ticket, body):
    """(ticket, body) of a reply: a ticket (a string) and a dict of node -> value; else None."""
    return (ticket, body) if isinstance(ticket, str) and ticket and isinstance(body, dict) else None


class _AmqpMailbox(object):
    """Requests published to the fanout exchange; replies consumed from an auto-delete queue
    bound to the reply exchange, declared as kombu declares it."""

    def __init__(self, broker):
        from ansible_collections.celeryops.fleet.plugins.module_utils._amqp_connection import AmqpConnection
        self.connection = AmqpConnection(broker)  # connects; maps pika's errors
        self.oid = None
        self.declared = False

    def publish(self, bodies, expires, reply):
        if not self.declared:
            # As Celery declares it; only when sending.
            self.connection.declare_exchange(PIDBOX_EXCHANGE, 'fanout')
            self.declared = True
        if reply and self.oid is None:
            self.oid = str(uuid.uuid4())
            self.connection.declare_exchange(REPLY_EXCHANGE, 'direct')
            self.connection.listen(reply_queue(self.oid), REPLY_EXCHANGE, self.oid, expires=REPLY_QUEUE_EXPIRES,
                                   message_ttl=REPLY_QUEUE_TTL, what='the reply queue')
        for body in bodies(self.oid):
            self.connection.publish_json(PIDBOX_EXCHANGE, '', body, headers={'clock': 1, 'expires': expires})

    def replies(self, wait):
        return [_reply(headers.get('ticket') if isinstance(headers, dict) else None, value)
                for headers, value in self.connection.receive(wait)]

    def check(self, timeout, complete):
        """Missing replies must not pass for missing workers when the broker is at fault: it
        blocks our publishing (a resource alarm), or it stopped answering (pika only notices
        that on a call that waits for an answer)."""
        if self.connection.blocked:
            raise self.connection.blocked_error(timeout, 'timeout')
        if not complete and self.oid is not None:
            self.connection.check_queue(reply_queue(self.oid), what='checking the reply queue on')

    def close(self):
        # The reply queue is auto-delete: it goes with the connection.
        self.connection.close()


class Control(object):
    """One broker connection and one reply queue for every request of a module run."""

    def __init__(self, broker, layout):
        """``layout``: the RedisLayout of kombu's transport options (_queues.redis_layout); unused on RabbitMQ."""
        self.broker = broker
        self.layout = layout
        self.undecodable = 0   # replies skipped over every request of the run
        self.mailbox = self._open()

    def _open(self):
        if self.broker.transport == 'redis':
            return _RedisMailbox(self.broker, self.layout)
        return _AmqpMailbox(self.broker)

    def close(self):
        self.mailbox.close()

    def reconnect(self):
        """A new connection and reply queue after the broker went away (a restarted broker
        forgot our reply queue and its binding)."""
        self.mailbox.close()
        self.mailbox = self._open()

    def send(self, command, arguments=None, destination=None):
        """A command that gets no reply by design (``shutdown``)."""
        self.mailbox.publish(lambda _oid: [_request(command, arguments, destination)], expires=0, reply=False)

    def request(self, commands, expectation=None, destination=None, timeout=1.0):
        """Send every command of ``commands`` (name -> arguments) at once and collect the replies.

        Returns as soon as ``expectation`` is met for every command, or when ``timeout`` (a
        total) runs out. ``destination`` (node names) restricts which workers act.
        """
        expectation = expectation or Expectation()
        replies = Replies(commands)
        started = time.monotonic()
        deadline = started + timeout
        tickets = dict((str(uuid.uuid4()), command) for command in commands)
        self.mailbox.publish(
            lambda oid: [_request(command, commands[command], destination, ticket, oid)
                         for ticket, command in tickets.items()],
            # Whole seconds, rounded up: pika cannot put a float in a header.
            expires=int(time.time() + timeout) + 1, reply=True)

        grace_until = None
        while True:
            now = time.monotonic()
            met = [expectation.met_by(set(by_node)) for by_node in replies.by_command.values()]
            if grace_until is None and any(met):
                # The grace runs from the first command every expected node answered: a twin
                # answers that one about as fast, while the slower commands are still coming.
                grace_until = now + min(DUPLICATE_GRACE, max(MIN_DUPLICATE_GRACE, now - started))
            if now >= deadline or (all(met) and now >= (grace_until or now)):
                break
            wait_until = min(deadline, grace_until) if all(met) else deadline
            for reply in self.mailbox.replies(wait_until - now):
                command = tickets.get(reply[0]) if reply else None
                if reply is None:
                    replies.undecodable += 1
                elif command is not None:   # else a late reply to an earlier request
                    for node, value in reply[1].items():
                        if readable_reply(command, value):
                            replies.add(command, node, plain_error(command, value))
                        else:
                            replies.undecodable += 1
        replies.elapsed = time.monotonic() - started
        self.undecodable += replies.undecodable
        self.mailbox.check(timeout, complete=grace_until is not None)
        return replies
