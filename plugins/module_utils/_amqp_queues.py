# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""RabbitMQ queues through AMQP (an AmqpConnection) and, where enabled, the management HTTP API (a Management).

Ready messages and consumers come from a passive ``queue.declare``: real time and always
there. Unacknowledged counts exist only in the management API (statistics that lag a few
seconds); when it cannot be reached they are ``None`` and the reason is kept.
Reading messages (peek, breakdown, filtered purge, trim) consumes them without acking
and then requeues them (nack), which puts them back in their places on a classic queue (marked
redelivered). Only classic queues are read: on a quorum queue every requeue counts as a delivery
and goes to the back, and a stream cannot give messages back at all (see ``unsafe_read``).
"""

from __future__ import annotations

import time

from ansible_collections.celeryops.fleet.plugins.module_utils._amqp_connection import LOCKED, AmqpConnection
from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, Refused
from ansible_collections.celeryops.fleet.plugins.module_utils._celery_names import is_internal_queue
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import describe_message

# Receiving a backlog: after this many seconds without a delivery, ask the broker whether
# anything is still ready (none: other consumers took the rest, we have all we can get).
QUIET_SECONDS = 1.0
# Acks and nacks sent per bounded call when removing messages.
ACK_BATCH = 5000
# The largest prefetch count AMQP can say (a short).
MAX_PREFETCH = 65535


def dead_lettering(arguments, policy):
    """delivery_limit and dead_letter of a queue from its x-arguments and its effective policy, as RabbitMQ
    resolves them: the lower delivery limit of the two; the queue's own dead-letter exchange and routing key
    over the policy's. Values that are not what RabbitMQ accepts are reported as given, never guessed at."""
    arguments = arguments if isinstance(arguments, dict) else {}
    policy = policy if isinstance(policy, dict) else {}
    limits = [value for value in (arguments.get('x-delivery-limit'), policy.get('delivery-limit'))
              if isinstance(value, int) and not isinstance(value, bool)]
    exchange = arguments.get('x-dead-letter-exchange', policy.get('dead-letter-exchange'))
    dead_letter = None
    if exchange is not None:
        dead_letter = dict(exchange=exchange,
                           routing_key=arguments.get('x-dead-letter-routing-key', policy.get('dead-letter-routing-key')),
                           strategy=arguments.get('x-dead-letter-strategy', policy.get('dead-letter-strategy', 'at-most-once')))
    return dict(delivery_limit=min(limits) if limits else None, dead_letter=dead_letter)


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


class AmqpQueues(object):
    """Queue state and changes on a RabbitMQ broker."""

    transport = 'amqp'

    def __init__(self, broker, management=None):
        self.broker = broker
        self.management = management
        self.connection = AmqpConnection(broker)
        self._forget()

    def _forget(self):
        """What this object learnt on its connection, dropped with it."""
        self.management_records = None   # the last management listing of the vhost: name -> record
        self._locked = set()   # queues exclusive to another connection
        self._settled = set()   # queues this connection acked or requeued messages on

    @property
    def management_error(self):
        """Why the management API could not be used (last request), or None."""
        return self.management.error if self.management is not None else None

    def reconnect(self):
        """A new connection after the broker went away (the old one is beyond use)."""
        self.connection.reconnect()
        self._forget()

    def close(self):
        self.connection.close()

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
        counts = self.connection.declare_passive(name)
        if counts is None:
            return False, 0, 0
        if counts == LOCKED:
            self._locked.add(name)
            record = self._management_record(name)
            return True, record.get('messages_ready') or 0, record.get('consumers') or 0
        return (True,) + counts

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

    def quorum_facts(self, name):
        """For a quorum queue in the last management listing: its leader, members and the members online, the
        delivery limit and where dead letters go, each as RabbitMQ applies it (a policy and the queue's
        x-arguments together); {} for any other queue."""
        record = (self.management_records or {}).get(name) or {}
        if record.get('type') != 'quorum':
            return {}
        return dict(leader=record.get('leader'), members=record.get('members'), online=record.get('online'),
                    **dead_lettering(record.get('arguments'), record.get('effective_policy_definition')))

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

    def _consume_ready(self, name, option, limit=None, describe=describe_message):
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
        ``describe(headers, properties, envelope)`` makes the view of each message (describe_message's by default).
        """
        exists, ready, _consumers = self.declare_passive(name)
        wanted = ready if limit is None else min(ready, limit)
        if not exists or wanted <= 0 or name in self._locked:
            return []
        call = self.connection.call
        channel = self.connection.channel()
        received = []

        def on_message(_channel, method, properties, body):
            envelope = {'content-type': properties.content_type, 'body': body}
            decoded = describe(properties.headers, {'priority': properties.priority}, envelope)
            decoded['redelivered'] = method.redelivered
            received.append((method.delivery_tag, decoded))

        prefetch = 0 if limit is None else wanted
        call(channel.basic_qos, prefetch_count=prefetch, what='setting qos on')
        # The guard, whatever the management API said: RabbitMQ refuses a consumer on a channel with a
        # global QoS (prefetch > 0) on any queue but a classic one, before it delivers anything. Set after
        # the per-consumer prefetch, which lifts it on RabbitMQ 3.x.
        call(channel.basic_qos, prefetch_count=prefetch or MAX_PREFETCH, global_qos=True, what='setting qos on')
        tag = self.connection.consume(name, on_message)
        if tag is None:
            raise unsafe_read(name, option)
        # Lifted at once: else every delivery waits for the channel's limiter, and a read stops at 65,535.
        call(channel.basic_qos, prefetch_count=0, global_qos=True, what='setting qos on')
        read = False
        try:
            self._receive_all(name, received, wanted, prefetch)
            read = True
        finally:
            # Also when the read failed, before anything is settled: pika rejects, one by one, the
            # deliveries it holds for a consumer still active when the channel closes, and after our
            # requeue of everything the broker knows none of those tags (406), which hid what had
            # ended the read.
            if channel.is_open and not self.connection.broken:
                try:
                    call(channel.basic_cancel, tag, what='cancelling the consumer on')
                except BrokerError:
                    if read:
                        raise  # else the error that ended the read is the one to tell
        return received[:wanted] if limit is not None else received

    def _receive_all(self, name, received, wanted, prefetch):
        # Deliveries stopped although messages are ready (another consumer is the queue's single active
        # one, or the broker is stuck): the quiet second that shows it, then the timeout.
        stall = QUIET_SECONDS + self.broker.timeout
        last_count, quiet_since, checked_at = 0, time.monotonic(), None
        while len(received) < wanted:
            self.connection.process(0.05)
            now = time.monotonic()
            if len(received) != last_count:
                last_count, quiet_since, checked_at = len(received), now, None
                continue
            if now - quiet_since < QUIET_SECONDS or (checked_at is not None and now - checked_at < QUIET_SECONDS):
                continue
            checked_at = now
            still_ready = self._ready_now(name)
            if still_ready is None:
                return  # the queue is gone
            if still_ready == 0:
                # The queue has handed out all it had: to other consumers, or to us. Ours may still be on
                # their way: RabbitMQ's channel answers a declare ahead of deliveries it has yet to forward.
                # It handles basic.qos itself, in turn, so that answer comes back behind all of them.
                self.connection.call(self.connection.channel().basic_qos, prefetch_count=prefetch,
                                     what='setting qos on')
                self.connection.process(0)
                return
            if now - quiet_since >= stall:
                raise BrokerError("queue '%s': received %d of %d messages, then none for %.1fs although %d are still "
                                  "ready (is another consumer the single active consumer of the queue?)"
                                  % (name, len(received), wanted, now - quiet_since, still_ready),
                                  option='connect_timeout', endpoint=self.broker.endpoint)

    def _ready_now(self, name):
        """Ready messages of a queue we consume from (ours excluded), None if the queue went away. Asked on
        the channel we consume on, which answers it in turn."""
        counts = self.connection.declare_passive(name)
        return counts[0] if isinstance(counts, tuple) else None

    def _release(self):
        """Put every message still unacked back in its place, and close the channel."""
        self.connection.release_channel()

    def ready(self, name):
        """Ready messages of a queue, counting every ack and requeue this connection sent.

        RabbitMQ answers queue.declare ahead of the acks and requeues still waiting at the queue (it
        gives that call priority), so right after a trim it may not count the kept messages yet.
        basic.get waits its turn behind them and says how many remain; the message it took goes back.
        Only after we settled messages there, on a classic queue: elsewhere a requeue is not harmless.
        """
        if name not in self._settled:
            return self.declare_passive(name)[1]
        got = self.connection.get_one(name)
        if got is None:
            return 0
        self.connection.call(self.connection.channel().basic_nack, delivery_tag=got.delivery_tag, requeue=True,
                             what='requeueing on')
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
            ok = self.connection.call(self.connection.channel().queue_purge, name, what='purging on')
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

    def messages(self, name, option, describe=describe_message):
        """Every ready message of a queue in delivery order, each as ``describe`` makes it (see _consume_ready);
        all are given back (requeued, in their places on a classic queue, with the redelivered flag set)."""
        try:
            return [decoded for _tag, decoded in self._consume_ready(name, option, describe=describe)]
        finally:
            self._release()

    def purge_matching(self, name, matcher, check_mode=False, option='state', describe=describe_message):
        """Remove the ready messages for which ``matcher(view)`` returns something true (``view`` made by
        ``describe``), requeueing the others in their places; returns what it returned for each one removed
        (in check mode, that would be removed)."""
        self._refuse_locked(name, 'purged')
        picks = {}

        def select(received):
            picks.clear()
            for tag, decoded in received:
                pick = matcher(decoded)
                if pick:
                    picks[tag] = pick
            return list(picks)
        self._ack_selected(name, option, select, check_mode, describe)
        return list(picks.values())

    def _ack_selected(self, name, option, select, check_mode, describe=describe_message):
        """Receive every ready message, ack (remove) those ``select`` picks, requeue the rest."""
        try:
            received = self._consume_ready(name, option, describe=describe)
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
        channel = self.connection.channel()

        def settle(batch):
            for tag, goes in batch:
                if goes:
                    channel.basic_ack(delivery_tag=tag, multiple=True)
                else:
                    channel.basic_nack(delivery_tag=tag, multiple=True, requeue=True)
        for start in range(0, len(runs), ACK_BATCH):
            self.connection.call(settle, runs[start:start + ACK_BATCH], what='acking on')
