# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Celery remote control without the user's app: kombu's pidbox mailbox, as `celery inspect` uses it.

Celery's own reply collection waits until no reply came for ``timeout`` seconds, unless it
knows how many to expect. Here every command of a request is sent at once, replies for all
of them are read from one reply queue, and collection stops as soon as every expected node
has answered every command; ``timeout`` is a total budget. Replies are kept per node and
counted, so two workers with the same name show as a duplicate instead of merging.
"""

from __future__ import annotations

import fnmatch
import socket
import time
import traceback

try:
    from kombu import Connection, Consumer
    from kombu.pidbox import Mailbox
    from kombu.utils.uuid import uuid
    HAS_KOMBU = True
    KOMBU_IMPORT_ERROR = None
except ImportError:  # guarded: the module reports missing_required_lib
    HAS_KOMBU = False
    KOMBU_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, scrub, time_limit

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
# Celery's defaults for the control exchange and its queues (control_exchange, control_queue_*).
CONTROL_EXCHANGE = 'celery'
REPLY_QUEUE_TTL = 300.0
REPLY_QUEUE_EXPIRES = 10.0
# After every expected node answered, a moment more to catch a second worker of the same name.
DUPLICATE_GRACE = 0.1


def is_pattern(name):
    return any(c in name for c in '*?[')


def check_node_names(nodes, option):
    """Node names look like worker1@host; glob patterns (*@host) are taken as they are."""
    for node in nodes or []:
        if not node or not node.strip():
            raise BrokerError('%s: a node name is empty' % option, option=option)
        if not is_pattern(node) and ('@' not in node or node.startswith('@') or node.endswith('@')):
            raise BrokerError("%s: '%s' is not a node name like worker1@host (or a pattern like *@host)"
                              % (option, node), option=option)


class Replies(object):
    """Replies to one request: per command, per node, every value that came (in order)."""

    def __init__(self, commands):
        self.by_command = dict((command, {}) for command in commands)
        self.elapsed = 0.0

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


class Control(object):
    """One broker connection, one mailbox, one reply queue for every request."""

    def __init__(self, broker, global_keyprefix=''):
        if not HAS_KOMBU:
            raise BrokerError('the kombu Python library (installed with celery) is needed for remote control')
        self.broker = broker
        if broker.transport == 'redis':
            options = {'socket_timeout': broker.timeout, 'socket_connect_timeout': broker.timeout,
                       'max_retries': 1}
            if global_keyprefix:
                options['global_keyprefix'] = global_keyprefix
            ssl = None
            if broker.tls:
                import ssl as ssl_module
                ssl = {'ssl_cert_reqs': ssl_module.CERT_REQUIRED if broker.tls_verify else ssl_module.CERT_NONE,
                       'ssl_ca_certs': broker.tls_ca_file, 'ssl_certfile': broker.tls_cert_file,
                       'ssl_keyfile': broker.tls_key_file}
            self.connection = Connection(hostname=broker.host, port=broker.port, userid=broker.user,
                                         password=broker.password, virtual_host=str(broker.db), transport='redis',
                                         ssl=ssl, connect_timeout=broker.timeout, transport_options=options)
            # Closing a channel waits for the BRPOP in flight, which blocks up to the transport's
            # brpop_timeout (1 s, not a transport option): keep it short.
            self.connection.transport.brpop_timeout = 0.1
        else:
            ssl = None
            if broker.tls:
                import ssl as ssl_module
                ssl = {'cert_reqs': ssl_module.CERT_REQUIRED if broker.tls_verify else ssl_module.CERT_NONE,
                       'ca_certs': broker.tls_ca_file, 'certfile': broker.tls_cert_file,
                       'keyfile': broker.tls_key_file}
            self.connection = Connection(hostname=broker.host, port=broker.port, userid=broker.user or 'guest',
                                         password=broker.password or 'guest', virtual_host=broker.vhost,
                                         transport='pyamqp', ssl=ssl, connect_timeout=broker.timeout,
                                         transport_options={'read_timeout': broker.timeout,
                                                            'write_timeout': broker.timeout})
        self.mailbox = Mailbox(CONTROL_EXCHANGE, type='fanout', accept=['json'], serializer='json',
                               reply_queue_ttl=REPLY_QUEUE_TTL, reply_queue_expires=REPLY_QUEUE_EXPIRES)(
                                   self.connection)
        self._guard(lambda: self.connection.ensure_connection(max_retries=1, timeout=broker.timeout), 'connecting to')
        self.channel = self._guard(lambda: self.connection.default_channel, 'opening a channel on')

    def close(self):
        try:
            self.connection.release()
        except Exception:  # best effort: the reply queue expires by itself
            pass

    def _guard(self, func, what, budget=None):
        """Run one kombu operation, bounded in time, its failures turned into a BrokerError."""
        endpoint = self.broker.endpoint
        try:
            with time_limit((budget if budget is not None else self.broker.timeout) + 1.0,
                            '%s %s' % (what, endpoint)):
                return func()
        except BrokerError:
            raise
        except Exception as exc:  # kombu raises each transport's own errors
            reason = scrub(exc, self.broker.password) or type(exc).__name__
            lowered = reason.lower()
            option = 'broker_url'
            if 'auth' in lowered or 'access_refused' in lowered or 'wrongpass' in lowered:
                option = 'broker_password'
                reason = 'authentication failed: ' + reason
            raise BrokerError('%s %s failed: %s' % (what, endpoint, reason), option=option, endpoint=endpoint)

    def send(self, command, arguments=None, destination=None):
        """A command that gets no reply by design (``shutdown``)."""
        self._guard(lambda: self.mailbox._publish(command, arguments or {}, destination=destination,
                                                  channel=self.channel), 'sending %s to' % command)

    def request(self, commands, expectation=None, destination=None, timeout=1.0):
        """Send every command of ``commands`` (name -> arguments) at once and collect the replies.

        Returns as soon as ``expectation`` is met for every command, or when ``timeout`` (a
        total) runs out. ``destination`` (node names) restricts which workers act.
        """
        expectation = expectation or Expectation()
        replies = Replies(commands)
        tickets = {}
        started = time.monotonic()
        deadline = started + timeout

        def publish_all():
            for command, arguments in commands.items():
                ticket = uuid()
                tickets[ticket] = command
                self.mailbox._publish(command, arguments or {}, destination=destination, reply_ticket=ticket,
                                      channel=self.channel, timeout=timeout)
        self._guard(publish_all, 'sending %s to' % ', '.join(commands))

        def on_message(body, message):
            command = tickets.get(message.headers.get('ticket'))
            if command is not None and isinstance(body, dict):
                for node, value in body.items():
                    replies.add(command, node, value)

        def complete():
            return all(expectation.met_by(set(by_node)) for by_node in replies.by_command.values())

        def collect():
            consumer = Consumer(self.channel, queues=[self.mailbox.reply_queue], accept=['json'],
                                callbacks=[on_message], no_ack=True)
            with consumer:
                grace_until = None
                while True:
                    now = time.monotonic()
                    if now >= deadline or (grace_until is not None and now >= grace_until):
                        return
                    if grace_until is None and complete():
                        grace_until = min(deadline, now + DUPLICATE_GRACE)
                        continue
                    try:
                        self.connection.drain_events(timeout=max(0.01, min(deadline, grace_until or deadline) - now))
                    except socket.timeout:
                        pass
        self._guard(collect, 'collecting replies from', budget=timeout)
        replies.elapsed = time.monotonic() - started
        return replies
