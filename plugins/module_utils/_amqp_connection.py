# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One connection to a RabbitMQ broker (pika's BlockingConnection) and its shared channel: connecting, every
blocking call bounded in time (``time_limit``) and its failures turned into a BrokerError that names the
endpoint and the option to look at, reconnecting, closing; and what the queue, control and event layers do
with it beyond single calls: a passive declare that answers "missing" or "exclusive to another connection"
as data, a consumer refused for the queue's type, and a queue of our own bound to an exchange whose JSON
messages are kept until ``receive()`` takes them.

Private to celeryops.fleet; the API may change between releases.
"""

from __future__ import annotations

import contextlib
import json
import signal
import ssl
import threading
import time
import traceback

try:
    import pika
    from pika import exceptions as pika_exceptions
    from pika.adapters.utils.connection_workflow import AMQPConnectorException, AMQPConnectorStackTimeout
    HAS_PIKA = True
    PIKA_IMPORT_ERROR = None
except ImportError:  # guarded: the module reports missing_required_lib
    HAS_PIKA = False
    PIKA_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (
    BrokerError, scrub, ssl_context, tls_failure)
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import NotAnEnvelope, loads

# The connection name RabbitMQ shows, so an operator can tell us apart.
CLIENT_NAME = 'celeryops.fleet'


def has_pika():
    """Whether pika imports. While it did not, it is tried again: an interpreter that runs task after task
    (Mitogen's) keeps this module from a task that ran before pika was installed (by a task of the same play)."""
    if not HAS_PIKA:
        try:
            import pika as library
            from pika import exceptions as library_exceptions
            from pika.adapters.utils.connection_workflow import AMQPConnectorException as connector_exception
            from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout as stack_timeout
        except ImportError:
            globals()['PIKA_IMPORT_ERROR'] = traceback.format_exc()
            return False
        globals().update(pika=library, pika_exceptions=library_exceptions, AMQPConnectorException=connector_exception,
                         AMQPConnectorStackTimeout=stack_timeout, HAS_PIKA=True, PIKA_IMPORT_ERROR=None)
    return True


# What a passive declare says of a queue that is exclusive to another connection (405 RESOURCE_LOCKED).
LOCKED = 'locked'
# What queue.delete with if_unused says of a queue that has a consumer (406 PRECONDITION_FAILED).
IN_USE = 'in use'


@contextlib.contextmanager
def time_limit(seconds, what, progress=None):
    """Raise BrokerError if the block runs longer than ``seconds``.

    Some client calls (pika's blocking RPCs) wait for a reply without any timeout of
    their own; a broker that accepts the connection and then goes silent must not hang
    a pipeline. With ``progress`` (a function whose value changes while data arrives, such
    as a byte count), the limit is on silence instead: a reply queued behind a long stream
    of deliveries is late, not lost. Uses SIGALRM, so it only guards the main thread, where
    modules run: under Ansible's own runner, and under Mitogen too (its interpreter runs each task
    on its main thread; an async task, or one with mitogen_task_isolation=fork, in a forked child,
    where the forking thread is the main one). The alarm and the handler are restored on the way
    out, so that an interpreter that runs task after task finds neither.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = [progress() if progress else None]

    def _expired(signum, frame):
        now = progress() if progress else None
        if now != seen[0]:
            seen[0] = now
            signal.setitimer(signal.ITIMER_REAL, seconds)
            return
        raise BrokerError('timed out after %.1fs %s' % (seconds, what), option='connect_timeout', lost=True)

    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    if 0 < outer_left <= seconds:
        # An enclosing time_limit (or another alarm) fires first anyway: leave it alone.
        yield
        return
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:
            # An enclosing time_limit (or another alarm) was running: give it back what it has left.
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 0.001))


class AmqpConnection(object):
    """A connection to one broker and the channel its users share.

    ``broken``: the broker went away (or closed the connection), so closing would only wait for it.
    ``blocked``: the broker's reason (or True) while a resource alarm blocks this connection.
    """

    def __init__(self, broker):
        if not HAS_PIKA:
            raise BrokerError('the pika Python library is needed for %s' % broker.endpoint)
        self.broker = broker
        self._connect()

    @staticmethod
    def _parameters_of(broker):
        credentials = pika.PlainCredentials(broker.user or 'guest', broker.password or 'guest')
        kwargs = dict(host=broker.host, port=broker.port, virtual_host=broker.vhost, credentials=credentials,
                      connection_attempts=1, retry_delay=0, socket_timeout=broker.timeout,
                      stack_timeout=broker.timeout, blocked_connection_timeout=broker.timeout, heartbeat=0,
                      client_properties={'connection_name': CLIENT_NAME})
        if broker.tls:
            kwargs['ssl_options'] = pika.SSLOptions(ssl_context(broker), server_hostname=broker.host)
        return pika.ConnectionParameters(**kwargs)

    def _connect(self):
        """Connect to the first URL of broker_url (a failover list, in order) that answers within connect_timeout,
        and tell the broker which one did. Another URL is tried only when one is unreachable: a wrong password,
        vhost or certificate fails at once, naming the option. (kombu's round-robin or shuffle spread long-lived
        workers over the URLs; a one-shot check just needs one that answers.)"""
        primary = self.broker
        candidates = primary.candidates
        unreachable = []
        for index, candidate in enumerate(candidates):
            self.broker = candidate   # messages name what is being tried
            try:
                self._connect_to(self._parameters_of(candidate))
            except BrokerError as error:
                if not error.lost or len(candidates) == 1:
                    raise
                unreachable.append((candidate.endpoint, error.msg))
                continue
            finally:
                self.broker = primary
            primary.answered(candidate, index, unreachable)
            return
        raise BrokerError('none of the %d broker URLs answered within %ss (connect_timeout): %s'
                          % (len(candidates), primary.timeout, '; '.join(msg for _e, msg in unreachable)),
                          option='broker_url', endpoint=primary.endpoint, lost=True)

    def _connect_to(self, parameters):
        self.broken = False
        self.blocked = None
        self._connection = None
        self._connection = self.call(pika.BlockingConnection, parameters, what='connecting')
        self._connection.add_on_connection_blocked_callback(self._on_blocked)
        self._connection.add_on_connection_unblocked_callback(self._on_unblocked)
        self._channel = None
        self._inbox = []   # (headers, JSON value) of the messages of listen(), until receive() takes them

    def _on_blocked(self, _connection, frame):
        self.blocked = getattr(frame.method, 'reason', None) or True

    def _on_unblocked(self, _connection, _frame):
        self.blocked = None

    def reconnect(self):
        """A new connection after the broker went away (the old one is beyond use)."""
        self.close()
        self._connect()

    def close(self):
        try:
            # A blocked connection is not read by the broker: its close-ok would never come.
            if self._connection is not None and self._connection.is_open and not (self.broken or self.blocked):
                # pika waits for the broker's close-ok without a timeout of its own.
                with time_limit(self.broker.timeout, 'closing the connection to %s' % self.broker.endpoint):
                    self._connection.close()
                return
        except Exception:  # closing is best effort; the broker requeues anything still held
            pass
        self._abort()

    def _abort(self):
        """Drop the connection without waiting for the broker (gone, silent or blocking us): its socket, and the
        pair of sockets pika's I/O loop wakes itself with, are closed now. Left to the garbage collector they
        stay open until it runs, which in an interpreter that outlives the module (Mitogen's) can be many tasks
        later, and the broker keeps what the connection holds (unacked messages, exclusive queues) meanwhile."""
        connection, self._connection, self._channel = self._connection, None, None
        impl = getattr(connection, '_impl', None)
        if impl is None:
            return
        try:
            transport = getattr(impl, '_transport', None)
            if transport is not None:
                transport.abort()   # closes the socket from the I/O loop, without a word to the broker
                connection.process_data_events(0)
        except Exception:  # the connection is beyond use: whatever pika says of it now is moot
            pass
        try:
            impl.ioloop.close()
        except Exception:
            pass

    # -- errors -----------------------------------------------------------------------------

    def call(self, func, *args, **kwargs):
        """One blocking pika call (``what`` it does, for messages), bounded in time, its failures turned into a
        BrokerError."""
        try:
            return self._bounded(func, *args, **kwargs)
        except BrokerError as error:
            self.broken = self.broken or error.lost  # then closing would only wait for a dead broker
            raise

    def _bounded(self, func, *args, **kwargs):
        what = kwargs.pop('what', 'waiting for a reply')
        endpoint = self.broker.endpoint
        try:
            with time_limit(self.broker.timeout + 0.5, '%s %s' % (what, endpoint), progress=self._bytes_received):
                return func(*args, **kwargs)
        except pika_exceptions.ProbableAuthenticationError as exc:
            raise BrokerError('authentication failed at %s: %s (check the user and password in broker_url or '
                              'broker_password)' % (endpoint, self._reason(exc)), option='broker_password',
                              endpoint=endpoint)
        except pika_exceptions.ProbableAccessDeniedError as exc:
            raise BrokerError("broker_url: access to vhost '%s' refused at %s (does the vhost exist, and may the "
                              "user use it?): %s" % (self.broker.vhost, endpoint, self._reason(exc)),
                              option='broker_url', endpoint=endpoint)
        except pika_exceptions.ConnectionClosedByBroker as exc:
            reason = self._reason(exc)
            if 'vhost' in reason.lower() or exc.reply_code == 530:
                raise BrokerError("broker_url: vhost '%s' is not usable at %s: %s" % (self.broker.vhost, endpoint, reason),
                                  option='broker_url', endpoint=endpoint)
            # 320 CONNECTION_FORCED: the node is shutting down (a restart) or an operator closed us.
            raise BrokerError('%s closed the connection: %s' % (endpoint, reason), endpoint=endpoint, lost=True)
        except pika_exceptions.IncompatibleProtocolError as exc:
            raise BrokerError('cannot connect to %s: the port does not speak AMQP%s (%s)'
                              % (endpoint, '' if self.broker.tls else ' in plaintext; use amqps:// for TLS',
                                 type(exc).__name__), option='broker_url', endpoint=endpoint)
        except pika_exceptions.ConnectionBlockedTimeout:
            raise self.blocked_error(self.broker.timeout, 'connect_timeout')
        except pika_exceptions.AMQPConnectionError as exc:
            if self._connection is not None:
                raise BrokerError('lost the connection to %s: %s (the broker went away: restarted, stopped or cut off)'
                                  % (endpoint, self._reason(exc)), option='broker_url', endpoint=endpoint, lost=True)
            raise self._connect_error(exc)
        except pika_exceptions.ConnectionWrongStateError as exc:
            raise BrokerError('lost the connection to %s: %s' % (endpoint, self._reason(exc)), endpoint=endpoint,
                              lost=True)
        except pika_exceptions.AMQPError as exc:
            raise BrokerError('%s: %s' % (endpoint, self._reason(exc)), endpoint=endpoint)
        except AMQPConnectorStackTimeout:
            # The port accepted the connection and then said nothing (or not AMQP) in time.
            raise BrokerError('timed out after %ss during the AMQP handshake with %s (connect_timeout): the port '
                              'accepted the connection but did not answer%s'
                              % (self.broker.timeout, endpoint,
                                 '; does the port speak TLS?' if self.broker.tls else '; is it an AMQP port?'),
                              option='connect_timeout', endpoint=endpoint, lost=True)
        except AMQPConnectorException as exc:
            raise self._connect_error(exc)
        except OSError as exc:
            raise self._connect_error(exc)

    def _bytes_received(self):
        """Bytes read from the broker so far (None before the connection is up): a reply that waits
        behind deliveries still streaming in is not a silent broker. pika keeps the count on the
        connection that BlockingConnection wraps, where its own heartbeat checker reads it."""
        return getattr(getattr(self._connection, '_impl', None), 'bytes_received', None)

    def blocked_error(self, seconds, option):
        """RabbitMQ stops reading from a publishing connection while a resource alarm is on."""
        return BrokerError('the broker blocked the connection (memory or disk alarm%s) at %s: nothing it was sent '
                           'went through for %ss (%s); it takes no message from publishers until the alarm clears'
                           % ('; it says: %s' % self.blocked if isinstance(self.blocked, str) else '',
                              self.broker.endpoint, seconds, option), option=option, endpoint=self.broker.endpoint)

    def _connect_error(self, exc):
        """Why a connection failed; a failed TLS handshake says what to fix (the CA, amqps:// to a plaintext port)."""
        reason = self._reason(exc)
        tls_error = isinstance(exc, ssl.SSLError) or any(isinstance(a, ssl.SSLError) for a in getattr(exc, 'args', ()))
        failure = tls_failure(self.broker, reason, tls_error)
        text, option = failure or (reason, 'broker_url')
        # A broker that is down may come back (a wait retries); a certificate problem will not.
        return BrokerError('cannot connect to %s: %s' % (self.broker.endpoint, text), option=option,
                           endpoint=self.broker.endpoint, lost=failure is None)

    def _reason(self, exc):
        text = scrub(exc, self.broker.password)
        # pika's AMQPConnectionError often wraps the real cause as its first argument.
        if getattr(exc, 'args', None) and not text.strip('() ,'):
            text = scrub(repr(exc.args[0]), self.broker.password)
        return text or type(exc).__name__

    # -- the shared channel -----------------------------------------------------------------

    def channel(self):
        """The channel the users of this connection share, opened again if the broker closed it."""
        if self._channel is None or not self._channel.is_open:
            self._channel = self.call(self._connection.channel, what='opening a channel on')
        return self._channel

    def process(self, seconds, what='receiving from'):
        """Hand the deliveries that arrived (within ``seconds``) to the consumers' callbacks. Those that came
        in while a blocking call waited for its answer are held by pika until this runs."""
        self.call(self._connection.process_data_events, time_limit=seconds, what=what)

    def release_channel(self):
        """Put every message received on the shared channel and still unacked back in its place, and close
        the channel.

        Closing alone would requeue them too, but only once the queue sees the channel process
        end, which can be after our next request; a nack is queued at the queue before it.
        """
        channel, self._channel = self._channel, None
        if channel is None or not channel.is_open or self.broken:
            return  # a lost connection: the broker requeues them itself
        self.call(channel.basic_nack, delivery_tag=0, multiple=True, requeue=True, what='requeueing on')
        self.call(channel.close, what='closing a channel on')

    # -- what the layers above share --------------------------------------------------------

    def declare_passive(self, queue):
        """(ready messages, consumers) of ``queue`` in real time; None when there is no such queue, LOCKED when
        it is exclusive to another connection (which refuses even a passive declare)."""
        channel = self.channel()

        def declare():
            try:
                return channel.queue_declare(queue=queue, passive=True)
            except pika_exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code in (404, 405):  # no such queue / someone else's exclusive queue: data
                    return exc.reply_code
                raise
        ok = self.call(declare, what='declaring (passive) on')
        if isinstance(ok, int):  # the broker closed the channel
            self._channel = None
            return None if ok == 404 else LOCKED
        return ok.method.message_count, ok.method.consumer_count

    def delete_unused(self, queue):
        """queue.delete with if_unused: the broker deletes ``queue`` only if no consumer is on it at that moment
        (checked by the broker itself, so a consumer that attached a moment ago keeps it). The number of messages
        it held; None when there is no such queue, IN_USE when it has a consumer, LOCKED when it is exclusive to
        another connection (whose owner is alive: an exclusive queue goes with its connection)."""
        channel = self.channel()

        def delete():
            try:
                return channel.queue_delete(queue=queue, if_unused=True)
            except pika_exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code in (404, 405, 406):   # no such queue / exclusive / a consumer (if_unused)
                    return exc.reply_code
                raise
        ok = self.call(delete, what='deleting (if unused) on')
        if isinstance(ok, int):
            self._channel = None
            return {404: None, 405: LOCKED, 406: IN_USE}[ok]
        return ok.method.message_count

    def check_queue(self, queue, what):
        """Fail unless ``queue`` is still there: a call that proves the broker still answers."""
        self.call(self.channel().queue_declare, queue, passive=True, what=what)

    def get_one(self, queue):
        """basic.get of one message, unacked: its method (delivery_tag, message_count); None when the queue is
        empty or went away."""
        channel = self.channel()

        def get():
            try:
                return channel.basic_get(queue, auto_ack=False)[0]
            except pika_exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:  # deleted meanwhile
                    return None
                raise
        got = self.call(get, what='reading (basic.get) on')
        if got is None and not channel.is_open:
            self._channel = None
        return got

    def consume(self, queue, on_message):
        """basic.consume on the shared channel, without auto-ack: the consumer tag. None when the broker
        refuses the consumer for the channel's global QoS, as RabbitMQ does on any queue but a classic one:
        a quorum queue closes the connection (540 NOT_IMPLEMENTED, it is then broken), a stream the channel
        (406, it asks for a consumer prefetch first)."""
        channel = self.channel()

        def consume():
            try:
                return channel.basic_consume(queue, on_message, auto_ack=False, exclusive=False)
            except pika_exceptions.ConnectionClosedByBroker as exc:
                if exc.reply_code != 540 or 'global qos' not in str(exc.reply_text):
                    raise
                self.broken = True
            except pika_exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 406 or 'prefetch count is not set' not in str(exc.reply_text):
                    raise
                self._channel = None
            return None
        return self.call(consume, what='consuming from')

    def exchange_exists(self, exchange, kind):
        """Whether ``exchange`` is declared on the vhost (looked up only)."""
        channel = self.channel()

        def passive():
            try:
                channel.exchange_declare(exchange, kind, passive=True)
                return True
            except pika_exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return False
                raise
        return self.call(passive, what='looking up the exchange %s on' % exchange)

    def declare_exchange(self, exchange, kind):
        """Declare ``exchange`` as Celery does (not durable: another durability would be refused)."""
        self.call(self.channel().exchange_declare, exchange, kind, durable=False, what='declaring on')

    def publish_json(self, exchange, routing_key, body, headers):
        """Publish ``body`` as a transient JSON message, as kombu does."""
        properties = pika.BasicProperties(content_type='application/json', content_encoding='utf-8',
                                          delivery_mode=1, priority=0, headers=headers)
        self.call(self.channel().basic_publish, exchange, routing_key, json.dumps(body).encode('utf-8'), properties,
                  what='publishing on')

    def listen(self, queue, exchange, routing_key, expires, message_ttl, exclusive=False, what='our queue'):
        """Declare ``queue`` (ours: auto-delete, gone ``expires`` seconds after its last use, its messages after
        ``message_ttl``), bind it to ``exchange`` and consume it with auto-ack: the messages that arrive are
        kept, JSON-decoded, for ``receive()``. ``what`` names the queue in messages ('the event queue')."""
        channel = self.channel()
        self.call(channel.queue_declare, queue, durable=False, exclusive=exclusive, auto_delete=True,
                  arguments={'x-expires': int(expires * 1000), 'x-message-ttl': int(message_ttl * 1000)},
                  what='declaring %s on' % what)
        self.call(channel.queue_bind, queue, exchange, routing_key=routing_key, what='binding %s on' % what)

        def on_message(_channel, _method, properties, body):
            try:
                value = loads(body) if properties.content_type == 'application/json' else None
            except NotAnEnvelope:
                value = None
            self._inbox.append((properties.headers, value))
        self.call(channel.basic_consume, queue, on_message, auto_ack=True, what='consuming on')

    def receive(self, wait, what='waiting for a reply'):
        """[(headers, value)] of the messages of ``listen()`` that came within ``wait`` seconds (those already
        there at once); value is None for a message that is not JSON."""
        if not self._inbox:
            self.process(max(0.01, min(wait, self.broker.timeout)), what=what)
        out, self._inbox = self._inbox, []
        return out
