# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""RabbitMQ queues through AMQP (pika) and, where enabled, the management HTTP API.

Ready messages and consumers come from a passive ``queue.declare``: real time and always
there. Unacknowledged counts exist only in the management API (statistics that lag a few
seconds); when it cannot be reached they are ``None`` and the reason is kept.
Reading messages (peek, breakdown, filtered purge, trim) consumes them without acking
and then requeues them (nack), which puts them back in their places on a classic queue (marked
redelivered). Only classic queues are read: on a quorum queue every requeue counts as a delivery
and goes to the back, and a stream cannot give messages back at all (see ``unsafe_read``).
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import traceback
from http.client import HTTPException
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import HTTPSHandler, ProxyHandler, Request, build_opener

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
    BrokerError, scrub, ssl_context, time_limit, tls_failure)
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import describe_message
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import Refused
from ansible_collections.celeryops.fleet.plugins.module_utils._redis_queues import is_internal_queue

MANAGEMENT_PORT = 15672
MANAGEMENT_TLS_PORT = 15671

# Receiving a backlog: after this many seconds without a delivery, ask the broker whether
# anything is still ready (none: other consumers took the rest, we have all we can get).
QUIET_SECONDS = 1.0
# Acks and nacks sent per bounded call when removing messages.
ACK_BATCH = 5000
# The largest prefetch count AMQP can say (a short).
MAX_PREFETCH = 65535


def unsafe_read(name, option, queue_type=None):
    """The refusal to read (take and requeue the messages of) a queue that is not a classic queue;
    ``queue_type`` None: the broker refused our guarded consumer, so it is a quorum queue or a stream."""
    if queue_type is None:
        what = 'not a classic queue (the broker refused a consumer with a global QoS, as it does on quorum queues and streams)'
    else:
        what = {'quorum': 'a quorum queue', 'stream': 'a stream'}.get(queue_type, 'a %s queue' % queue_type)
    if queue_type == 'stream':
        purge = 'A stream cannot be purged either: its retention (x-max-age, x-max-length-bytes) removes messages.'
    else:
        purge = '%s purge without task_names (queue.purge) still works.' % (
            'On a quorum queue a' if queue_type is None else 'A')
    return Refused("%s: queue '%s' is %s; only classic queues are read. A read takes the messages and puts them "
                   "back: RabbitMQ counts each requeue as a delivery (past the queue's delivery limit a message is "
                   "dropped or dead-lettered) and moves requeued messages to the back of a quorum queue, and a stream "
                   "cannot take them back at all, so reading would reorder or drop messages. Nothing was read or "
                   "changed. %s" % (option, name, what, purge), option=option.split('=')[0])


def default_management_url(broker):
    """Same host as the broker, the management port (never the AMQP port)."""
    host = ('[%s]' % broker.host) if ':' in broker.host else broker.host
    if broker.tls:
        return 'https://%s:%d' % (host, MANAGEMENT_TLS_PORT)
    return 'http://%s:%d' % (host, MANAGEMENT_PORT)


class Management(object):
    """The RabbitMQ management HTTP API, or why it cannot be used."""

    def __init__(self, broker, url=None, user=None, password=None, validate_certs=True):
        self.broker = broker
        self.url = (url or default_management_url(broker)).rstrip('/')
        self.user = user if user is not None else (broker.user or 'guest')
        self.password = password if password is not None else (broker.password or 'guest')
        self.validate_certs = validate_certs
        self.error = None

    def get(self, path):
        try:
            answer = json.loads(self._open(path))
            self.error = None
            return answer
        except HTTPError as exc:
            # The AMQP connection already proved the vhost exists: a 404 means that management_url
            # is not the management API (another web server, a missing path prefix). Reading it as
            # "no queues" would report zero unacked messages with confidence.
            reason = 'HTTP %s%s' % (exc.code, {
                401: ' (check management_user and management_password)',
                403: ' (check management_user and management_password)',
                404: ' (is management_url the RabbitMQ management API, with its path prefix if any?)',
            }.get(exc.code, ''))
        except (URLError, OSError, ValueError, HTTPException) as exc:
            # HTTPException: something that is not HTTP answered (BadStatusLine from the AMQP
            # port, Flower's trap); URLError also wraps TLS validation failures.
            reason = scrub(getattr(exc, 'reason', None) or exc, self.password) or type(exc).__name__
        self.error = 'management API at %s: %s' % (self.url, reason)
        raise BrokerError(self.error, option='management_url', endpoint=self.url)

    def _open(self, path):
        """The body of one GET, with basic auth, no proxy (the API is next to the broker)."""
        handlers = [ProxyHandler({})]
        if self.url.startswith('https:'):
            context = ssl.create_default_context(cafile=self.broker.tls_ca_file)
            if not self.validate_certs:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            handlers.append(HTTPSHandler(context=context))
        credentials = base64.b64encode(('%s:%s' % (self.user, self.password)).encode('utf-8')).decode('ascii')
        request = Request(self.url + path, headers={'Authorization': 'Basic ' + credentials,
                                                    'Accept': 'application/json'})
        with build_opener(*handlers).open(request, timeout=self.broker.timeout) as response:
            return response.read()

    def queues(self, vhost):
        """name -> the queue's record, for every queue of the vhost, in one request."""
        columns = 'name,type,messages_ready,messages_unacknowledged,consumers,memory'
        records = self.get('/api/queues/%s?columns=%s' % (quote(vhost, safe=''), columns))
        if not isinstance(records, list) or not all(isinstance(r, dict) and 'name' in r for r in records):
            self.error = 'management API at %s: the answer is not a list of queues' % self.url
            raise BrokerError(self.error, option='management_url', endpoint=self.url)
        return dict((r['name'], r) for r in records)


class AmqpQueues(object):
    """Queue state and changes on a RabbitMQ broker."""

    transport = 'amqp'

    def __init__(self, broker, management=None):
        if not HAS_PIKA:
            raise BrokerError('the pika Python library is needed for %s' % broker.endpoint)
        self.broker = broker
        self.management = management
        credentials = pika.PlainCredentials(broker.user or 'guest', broker.password or 'guest')
        kwargs = dict(host=broker.host, port=broker.port, virtual_host=broker.vhost, credentials=credentials,
                      connection_attempts=1, retry_delay=0, socket_timeout=broker.timeout,
                      stack_timeout=broker.timeout, blocked_connection_timeout=broker.timeout, heartbeat=0,
                      client_properties={'connection_name': 'celeryops.fleet'})
        if broker.tls:
            kwargs['ssl_options'] = pika.SSLOptions(ssl_context(broker), server_hostname=broker.host)
        self.parameters = pika.ConnectionParameters(**kwargs)
        self._connect()

    def _connect(self):
        self.broken = False
        self.blocked = None   # the broker's reason (or True) while it blocks this connection
        self.connection = None
        self.connection = self._rpc(pika.BlockingConnection, self.parameters, what='connecting')
        self.connection.add_on_connection_blocked_callback(self._on_blocked)
        self.connection.add_on_connection_unblocked_callback(self._on_unblocked)
        self.channel = None
        self.management_records = None   # the last management listing of the vhost: name -> record
        self._locked = set()   # queues exclusive to another connection
        self._settled = set()   # queues this connection acked or requeued messages on

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
            if self.connection is not None and self.connection.is_open and not (self.broken or self.blocked):
                # pika waits for the broker's close-ok without a timeout of its own.
                with time_limit(self.broker.timeout, 'closing the connection to %s' % self.broker.endpoint):
                    self.connection.close()
        except Exception:  # closing is best effort; the broker requeues anything still held
            pass

    # -- errors -----------------------------------------------------------------------------

    def _rpc(self, func, *args, **kwargs):
        """One blocking pika call, bounded in time, its failures turned into a BrokerError."""
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
            if self.connection is not None:
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
        return getattr(getattr(self.connection, '_impl', None), 'bytes_received', None)

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

    def _open_channel(self):
        if self.channel is None or not self.channel.is_open:
            self.channel = self._rpc(self.connection.channel, what='opening a channel on')
        return self.channel

    # -- reading ----------------------------------------------------------------------------

    def discover(self, include_internal=False):
        if self.management is None:
            raise BrokerError('queue discovery on RabbitMQ needs the management API; name the queues with `queues` '
                              'or set management_url', option='queues', endpoint=self.broker.endpoint)
        records = self.management_records = self.management.queues(self.broker.vhost)
        return sorted(name for name in records if include_internal or not is_internal_queue(name))

    def declare_passive(self, name):
        """(exists, ready messages, consumers) in real time.

        A queue exclusive to another connection refuses even a passive declare (405
        RESOURCE_LOCKED); Celery 5.7 declares the remote control (``*.pidbox``) and event
        (``celeryev.*``) queues of workers that way. Such a queue exists, its counts come from
        the management API, and it is never read or changed.
        """
        channel = self._open_channel()

        def declare():
            try:
                return channel.queue_declare(queue=name, passive=True)
            except pika_exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code in (404, 405):  # no such queue / someone else's exclusive queue: data
                    return exc.reply_code
                raise
        ok = self._rpc(declare, what='declaring (passive) on')
        if isinstance(ok, int):  # the broker closed the channel
            self.channel = None
            if ok == 404:
                return False, 0, 0
            self._locked.add(name)
            record = self._management_record(name)
            return True, record.get('messages_ready') or 0, record.get('consumers') or 0
        return True, ok.method.message_count, ok.method.consumer_count

    def _management_record(self, name):
        """The management API's record of a queue that AMQP cannot look at."""
        if self.management_records is None or name not in self.management_records:
            error = None
            if self.management is None:
                error = 'no management API'
            else:
                try:
                    self.management_records = self.management.queues(self.broker.vhost)
                except BrokerError as exc:
                    error = exc.msg
            if error:
                raise BrokerError("queue '%s' is exclusive to another connection (as the remote control and event "
                                  "queues of Celery workers are), so AMQP cannot count it; that needs the management "
                                  "API: %s" % (name, error), option='queues', endpoint=self.broker.endpoint)
        return self.management_records.get(name) or {}

    def _refuse_locked(self, name, what):
        if name in self._locked:
            raise BrokerError("queue '%s' is exclusive to another connection (as the remote control and event queues "
                              "of Celery workers are); it cannot be %s" % (name, what), option='queues',
                              endpoint=self.broker.endpoint)

    def unacked(self, records=None):
        """name -> unacked count from the management API (or the queue ``records`` it just gave);
        None when it cannot tell (reason kept)."""
        if self.management is None:
            return None
        try:
            if records is None:
                records = self.management_records = self.management.queues(self.broker.vhost)
        except BrokerError:
            self.management_records = None   # an older listing must not answer queue_type()
            return None
        return dict((name, r.get('messages_unacknowledged')) for name, r in records.items())

    def queue_type(self, name):
        """classic, quorum, stream (or another type) from the last management listing; None when it cannot tell."""
        return ((self.management_records or {}).get(name) or {}).get('type')

    def refuse_unsafe(self, name, queue_type, option):
        """Raise Refused unless ``option`` (peek, breakdown, task_names, state=trimmed; None for a plain purge)
        can be done on the queue as asked, before anything is read or changed. A queue of unknown type is
        probed with the guarded consumer of a read (``_consume_ready``) that takes at most one message,
        which a classic queue gets back in its place."""
        if option is None:
            if queue_type == 'stream':
                raise Refused("state=purged: queue '%s' is a stream, which RabbitMQ cannot purge: its retention "
                              "(x-max-age, x-max-length-bytes) removes messages. Nothing was removed." % name,
                              option='state')
        elif queue_type is None:
            self.peek(name, 1, option)
        elif queue_type != 'classic':
            raise unsafe_read(name, option, queue_type)

    def _consume_ready(self, name, option, limit=None):
        """Receive the ready messages of a queue without acking them: [(delivery_tag, decoded)].

        Stops when the count from the passive declare has arrived (or ``limit``), or when
        nothing arrives any more, the broker has nothing ready left (other consumers took the
        rest) and everything it handed to us is here. Never on a clock alone: a large backlog
        arrives at the client's pace, and a partial read would make a breakdown wrong and a
        trim drop the wrong messages.
        The caller acks what should go and requeues the rest (``_release``), which puts them
        back in their original places. A queue exclusive to another connection cannot be read: [].
        Nor can a quorum queue or a stream: the consumer is refused before anything is delivered
        (``unsafe_read``, naming ``option``).
        """
        exists, ready, _consumers = self.declare_passive(name)
        wanted = ready if limit is None else min(ready, limit)
        if not exists or wanted <= 0 or name in self._locked:
            return []
        channel = self._open_channel()
        received = []

        def on_message(_channel, method, properties, body):
            envelope = {'content-type': properties.content_type, 'body': body}
            decoded = describe_message(properties.headers, {'priority': properties.priority}, envelope)
            decoded['redelivered'] = method.redelivered
            received.append((method.delivery_tag, decoded))

        prefetch = 0 if limit is None else wanted
        self._rpc(channel.basic_qos, prefetch_count=prefetch, what='setting qos on')
        # The guard, whatever the management API said: RabbitMQ refuses a consumer on a channel with a
        # global QoS (prefetch > 0) on any queue but a classic one, before it delivers anything. Set after
        # the per-consumer prefetch, which lifts it on RabbitMQ 3.x.
        self._rpc(channel.basic_qos, prefetch_count=prefetch or MAX_PREFETCH, global_qos=True, what='setting qos on')
        tag = self._rpc(self._consume, channel, name, on_message, option, what='consuming from')
        # Lifted at once: else every delivery waits for the channel's limiter, and a read stops at 65,535.
        self._rpc(channel.basic_qos, prefetch_count=0, global_qos=True, what='setting qos on')
        read = False
        try:
            self._receive_all(channel, name, received, wanted, prefetch)
            read = True
        finally:
            # Also when the read failed, before anything is settled: pika rejects, one by one, the
            # deliveries it holds for a consumer still active when the channel closes, and after our
            # requeue of everything the broker knows none of those tags (406), which hid what had
            # ended the read.
            if channel.is_open and not self.broken:
                try:
                    self._rpc(channel.basic_cancel, tag, what='cancelling the consumer on')
                except BrokerError:
                    if read:
                        raise  # else the error that ended the read is the one to tell
        return received[:wanted] if limit is not None else received

    def _consume(self, channel, name, on_message, option):
        """basic.consume, its refusal on a quorum queue or a stream turned into ``unsafe_read``."""
        try:
            return channel.basic_consume(name, on_message, auto_ack=False, exclusive=False)
        except pika_exceptions.ConnectionClosedByBroker as exc:
            # 540 NOT_IMPLEMENTED "... does not support global qos" closes the connection.
            if exc.reply_code != 540 or 'global qos' not in str(exc.reply_text):
                raise
            self.broken = True
        except pika_exceptions.ChannelClosedByBroker as exc:
            # A stream asks for a consumer prefetch before it looks at the global QoS.
            if exc.reply_code != 406 or 'prefetch count is not set' not in str(exc.reply_text):
                raise
            self.channel = None
        raise unsafe_read(name, option)

    def _receive_all(self, channel, name, received, wanted, prefetch):
        # Deliveries stopped although messages are ready (another consumer is the queue's single active
        # one, or the broker is stuck): the quiet second that shows it, then the timeout.
        stall = QUIET_SECONDS + self.broker.timeout
        last_count, quiet_since, checked_at = 0, time.monotonic(), None
        while len(received) < wanted:
            self._receive(0.05)
            now = time.monotonic()
            if len(received) != last_count:
                last_count, quiet_since, checked_at = len(received), now, None
                continue
            if now - quiet_since < QUIET_SECONDS or (checked_at is not None and now - checked_at < QUIET_SECONDS):
                continue
            checked_at = now
            still_ready = self._ready_now(channel, name)
            if still_ready is None:
                return  # the queue is gone
            if still_ready == 0:
                # The queue has handed out all it had: to other consumers, or to us. Ours may still be on
                # their way: RabbitMQ's channel answers a declare ahead of deliveries it has yet to forward.
                # It handles basic.qos itself, in turn, so that answer comes back behind all of them.
                self._rpc(channel.basic_qos, prefetch_count=prefetch, what='setting qos on')
                self._receive(0)
                return
            if now - quiet_since >= stall:
                raise BrokerError("queue '%s': received %d of %d messages, then none for %.1fs although %d are still "
                                  "ready (is another consumer the single active consumer of the queue?)"
                                  % (name, len(received), wanted, now - quiet_since, still_ready),
                                  option='connect_timeout', endpoint=self.broker.endpoint)

    def _receive(self, seconds):
        """Hand the deliveries that arrived (within ``seconds``) to the consumer's callback. Those that
        came in while a blocking call waited for its answer are held by pika until this runs; cancelling
        the consumer first would send them back unseen."""
        self._rpc(self.connection.process_data_events, time_limit=seconds, what='receiving from')

    def _ready_now(self, channel, name):
        """Ready messages of a queue we consume from (ours excluded), None if the queue went away."""
        def declare():
            try:
                return channel.queue_declare(queue=name, passive=True).method.message_count
            except pika_exceptions.ChannelClosedByBroker:
                return None
        return self._rpc(declare, what='declaring (passive) on')

    def _release(self):
        """Put every message still unacked back in its place, and close the channel.

        Closing alone would requeue them too, but only once the queue sees the channel process
        end, which can be after our next request; a nack is queued at the queue before it.
        """
        channel, self.channel = self.channel, None
        if channel is None or not channel.is_open or self.broken:
            return  # a lost connection: the broker requeues them itself
        self._rpc(channel.basic_nack, delivery_tag=0, multiple=True, requeue=True, what='requeueing on')
        self._rpc(channel.close, what='closing a channel on')

    def ready(self, name):
        """Ready messages of a queue, counting every ack and requeue this connection sent.

        RabbitMQ answers queue.declare ahead of the acks and requeues still waiting at the queue (it
        gives that call priority), so right after a trim it may not count the kept messages yet.
        basic.get waits its turn behind them and says how many remain; the message it took goes back.
        Only after we settled messages there, on a classic queue: elsewhere a requeue is not harmless.
        """
        if name not in self._settled:
            return self.declare_passive(name)[1]
        channel = self._open_channel()

        def get():
            try:
                return channel.basic_get(name, auto_ack=False)[0]
            except pika_exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:  # deleted meanwhile
                    return None
                raise
        got = self._rpc(get, what='reading (basic.get) on')
        if got is None:
            if not channel.is_open:
                self.channel = None
            return 0
        self._rpc(channel.basic_nack, delivery_tag=got.delivery_tag, requeue=True, what='requeueing on')
        return got.message_count + 1

    def peek(self, name, count, option='peek'):
        if count <= 0:
            return []
        try:
            return [decoded for _tag, decoded in self._consume_ready(name, option, limit=count)]
        finally:
            self._release()

    def breakdown(self, name):
        counts = {}
        try:
            for _tag, decoded in self._consume_ready(name, 'breakdown'):
                counts[decoded['task']] = counts.get(decoded['task'], 0) + 1
        finally:
            self._release()
        return counts

    # -- changing ---------------------------------------------------------------------------

    def purge(self, name, task_names=None, check_mode=False):
        exists, ready, _consumers = self.declare_passive(name)
        self._refuse_locked(name, 'purged')
        if not task_names:
            if check_mode or not exists:
                return ready
            ok = self._rpc(self._open_channel().queue_purge, name, what='purging on')
            return ok.method.message_count
        return self._ack_selected(name, 'task_names',
                                  lambda received: [tag for tag, d in received if d['task'] in task_names], check_mode)

    def trim(self, name, keep, drop='oldest', check_mode=False):
        exists, ready, _consumers = self.declare_passive(name)
        self._refuse_locked(name, 'trimmed')
        if not exists or ready <= keep:
            return 0
        if check_mode:
            return ready - keep

        def select(received):
            excess = max(len(received) - keep, 0)
            if drop == 'newest':
                return [tag for tag, _d in received[len(received) - excess:]]
            return [tag for tag, _d in received[:excess]]
        return self._ack_selected(name, 'state=trimmed', select, check_mode=False)

    def _ack_selected(self, name, option, select, check_mode):
        """Receive every ready message, ack (remove) those ``select`` picks, requeue the rest."""
        try:
            received = self._consume_ready(name, option)
            tags = select(received)
            if not check_mode:
                self._settled.add(name)
                self._settle([tag for tag, _d in received], set(tags))
            return len(tags)
        finally:
            self._release()

    def _settle(self, received_tags, going):
        """Ack the ``going`` tags and requeue the other received ones, in delivery order: one
        ``multiple`` ack or nack per run of neighbours that go the same way (a trim is two frames),
        in batches that each get the time limit."""
        runs = []   # [last tag of the run, whether it goes]
        for tag in received_tags:
            if runs and runs[-1][1] == (tag in going):
                runs[-1][0] = tag
            else:
                runs.append([tag, tag in going])
        channel = self.channel

        def settle(batch):
            for tag, goes in batch:
                if goes:
                    channel.basic_ack(delivery_tag=tag, multiple=True)
                else:
                    channel.basic_nack(delivery_tag=tag, multiple=True, requeue=True)
        for start in range(0, len(runs), ACK_BATCH):
            self._rpc(settle, runs[start:start + ACK_BATCH], what='acking on')
