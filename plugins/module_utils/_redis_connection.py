# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One connection to a Redis broker (redis-py): connecting, every call bounded by the socket timeout and its
failures turned into a BrokerError that names the endpoint and the option to look at, reconnecting, closing;
and what the queue, control and event layers do with it beyond single commands: read a list with commands
sent ahead (CommandStream), take everything delivered to lists of ours, listen on PUB/SUB channels.

Private to celeryops.fleet; the API may change between releases.
"""

from __future__ import annotations

import traceback

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    HAS_REDIS = True
    REDIS_IMPORT_ERROR = None
    WatchError = redis.WatchError
except ImportError:  # guarded: the module reports missing_required_lib
    HAS_REDIS = False
    REDIS_IMPORT_ERROR = traceback.format_exc()

    class WatchError(Exception):
        """Stands in for redis.WatchError, which nothing raises without redis-py (call() raises this one for it
        if redis-py is imported later: see has_redis)."""

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (
    BrokerError, scrub, ssl_context, tls_failure)

# Shown in Redis CLIENT LIST (as the connection name in RabbitMQ), so an operator can tell us apart.
CLIENT_NAME = 'celeryops.fleet'


def has_redis():
    """Whether redis-py imports. While it did not, it is tried again: an interpreter that runs task after task
    (Mitogen's) keeps this module from a task that ran before redis-py was installed (by a task of the same play)."""
    if not HAS_REDIS:
        try:
            import redis as library
            from redis.backoff import NoBackoff as no_backoff
            from redis.retry import Retry as retry
        except ImportError:
            globals()['REDIS_IMPORT_ERROR'] = traceback.format_exc()
            return False
        # WatchError stays the stand-in the modules imported along with it: call() raises that one.
        globals().update(redis=library, NoBackoff=no_backoff, Retry=retry, HAS_REDIS=True, REDIS_IMPORT_ERROR=None)
    return True


class RedisConnection(object):
    """A redis-py client for one broker, checked with a PING. ``client`` is redis-py's; call it through
    ``call()``, which maps its failures. ``broken``: the broker went away, nothing more to tidy up on it."""

    def __init__(self, broker, client_name=CLIENT_NAME):
        if not HAS_REDIS:
            raise BrokerError('the redis Python library is needed for %s' % broker.endpoint)
        self.broker = broker
        self.client_name = client_name
        self.broken = False
        self.client = None
        self.connected = False   # once the broker answered, a connection error means it went away
        self._open()

    def _open(self):
        """Connect to the first candidate of ``broker`` (a failover list, in order) that answers within
        connect_timeout, through Sentinel to the master it names, and tell the broker which one answered.

        Order only: kombu's round-robin or shuffle spread long-lived workers over the URLs, a one-shot check
        just needs one that answers. Another candidate is tried only when one is unreachable (refused, reset,
        silent): a wrong password or certificate fails at once, naming the option."""
        primary = self.broker
        candidates = primary.candidates
        unreachable = []
        for index, candidate in enumerate(candidates):
            target = candidate
            try:
                if candidate.sentinels:
                    target = self._master(candidate)
                self.broker = target    # messages name what is being tried
                self.connected = False
                client = self._client(target)
                self.call(client.ping)
            except BrokerError as error:
                if not error.lost or len(candidates) == 1:
                    self.broker = primary
                    raise
                unreachable.append((target.endpoint, error.msg))
                continue
            finally:
                self.broker = primary
            primary.answered(target, index, unreachable)
            if self.client is None:
                self.client = client
            else:
                # The same client object: the layers above (and scripts registered on it) keep working.
                self.client.connection_pool.disconnect()
                self.client.connection_pool = client.connection_pool
            self.connected, self.broken = True, False
            return
        raise BrokerError('none of the %d broker URLs answered within %ss (connect_timeout): %s'
                          % (len(candidates), primary.timeout, '; '.join(msg for _e, msg in unreachable)),
                          option='broker_url', endpoint=primary.endpoint, lost=True)

    def _client(self, target):
        kwargs = dict(host=target.host, port=target.port, db=target.db, username=target.user,
                      password=target.password, socket_timeout=target.timeout,
                      socket_connect_timeout=target.timeout, retry=Retry(NoBackoff(), 0), client_name=self.client_name)
        if target.tls:
            kwargs.update(ssl=True, ssl_ca_certs=target.tls_ca_file, ssl_certfile=target.tls_cert_file,
                          ssl_keyfile=target.tls_key_file, ssl_check_hostname=target.tls_verify,
                          ssl_cert_reqs='required' if target.tls_verify else 'none')
            ssl_context(target)  # fails early and clearly on unreadable TLS files
        return redis.Redis(**kwargs)

    def _master(self, candidate):
        """The master the Sentinels of ``candidate`` name for its master_name, as a BrokerURL (redis-py's Sentinel
        asks them in turn). Unreachable Sentinels, or a master they see down (a failover under way), are ``lost``:
        a wait asks again. Sentinels that answer but know no such master, or refuse the password, are not."""
        from redis.sentinel import MasterNotFoundError, Sentinel
        timeout = candidate.timeout
        kwargs = dict(socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        if candidate.sentinel_password:
            kwargs['password'] = candidate.sentinel_password
        where = ','.join('%s:%s' % pair for pair in candidate.sentinels)
        sentinel = Sentinel(candidate.sentinels, sentinel_kwargs=kwargs)
        secrets = (candidate.sentinel_password, candidate.password)
        try:
            try:
                host, port = sentinel.discover_master(candidate.master_name)
            except MasterNotFoundError as exc:
                # redis-py's message holds a long repr of each Sentinel client: only what it says of them is kept.
                reason = scrub(exc, *secrets)
                if 'AuthenticationError' in reason or 'WRONGPASS' in reason or 'NOAUTH' in reason:
                    raise BrokerError('the Sentinels %s refused the password (sentinel_password)' % where,
                                      option='sentinel_password', endpoint=candidate.endpoint)
                known = self._sentinels_know(sentinel, candidate.master_name)
                if known is False:
                    raise BrokerError("no Sentinel of %s knows a master named '%s' (master_name)"
                                      % (where, candidate.master_name), option='master_name', endpoint=candidate.endpoint)
                raise BrokerError("the Sentinels %s name no master '%s' that is up (%s)"
                                  % (where, candidate.master_name, 'a failover under way?' if known else
                                     'no Sentinel answered within %ss (connect_timeout)' % timeout),
                                  option='broker_url', endpoint=candidate.endpoint, lost=True)
            except redis.ResponseError as exc:   # NOAUTH / WRONGPASS from a Sentinel that wants a password
                raise BrokerError('the Sentinels %s refused us: %s (sentinel_password)' % (where, scrub(exc, *secrets)),
                                  option='sentinel_password', endpoint=candidate.endpoint)
            except redis.RedisError as exc:
                raise BrokerError('asking the Sentinels %s for the master failed: %s' % (where, scrub(exc, *secrets)),
                                  option='broker_url', endpoint=candidate.endpoint, lost=True)
            # Which Sentinel answered: discover_master moves it to the front.
            answered = sentinel.sentinels[0].connection_pool.connection_kwargs
            target = candidate.copy(host=host, port=int(port))
            target.sentinel = '%s:%s' % (answered.get('host'), answered.get('port'))
            return target
        finally:
            for client in sentinel.sentinels:
                client.close()

    @staticmethod
    def _sentinels_know(sentinel, name):
        """Whether any Sentinel that answers knows master ``name``: None if none answers."""
        answer = None
        for client in sentinel.sentinels:
            try:
                if name in client.sentinel_masters():
                    return True
                answer = False
            except redis.RedisError:
                continue
        return answer

    def ping(self):
        self.call(self.client.ping)

    def close(self):
        self.client.close()

    def reconnect(self):
        """Drop the pooled connections and connect again: to the first candidate that answers, and through
        Sentinel to the master it names now (after a failover, the new one)."""
        self.client.connection_pool.disconnect()
        self.connected = False
        self._open()

    def script(self, source):
        """A Lua script registered with the client: call it through ``call()`` (keys=..., args=...)."""
        return self.client.register_script(source)

    def pipeline(self, transaction=True):
        """A redis-py pipeline: run it with ``call(pipe.execute)``."""
        return self.client.pipeline(transaction=transaction)

    # -- errors -----------------------------------------------------------------------------

    def call(self, func, *args, **kwargs):
        """Run one redis-py call, turning its failures into a BrokerError that names the endpoint."""
        try:
            return func(*args, **kwargs)
        except redis.WatchError as exc:
            if WatchError is redis.WatchError:
                raise  # a watched key changed: the caller tries again
            raise WatchError(str(exc)) from exc   # the stand-in, when redis-py came after this module (has_redis)
        except redis.AuthenticationError as exc:
            raise self._error('authentication failed at %s: %s (check the password in broker_url or broker_password)'
                              % (self.broker.endpoint, self._reason(exc)), option='broker_password')
        except redis.TimeoutError as exc:
            raise self._error('timed out after %ss talking to %s (connect_timeout): %s%s'
                              % (self.broker.timeout, self.broker.endpoint, self._reason(exc),
                                 ' (does the port speak TLS?)' if self.broker.tls else ''),
                              option='connect_timeout', lost=True)
        except redis.ConnectionError as exc:
            reason = self._reason(exc)
            if self.connected:
                raise self._error('lost the connection to %s: %s (the broker went away: restarted, stopped or cut off)'
                                  % (self.broker.endpoint, reason), option='broker_url', lost=True)
            failure = tls_failure(self.broker, reason)
            if failure:  # a certificate problem: not something a retry fixes
                raise self._error('cannot connect to %s: %s' % (self.broker.endpoint, failure[0]), option=failure[1])
            hint = ''
            if self.broker.tls is False and ('reset' in reason.lower() or 'closed' in reason.lower()):
                hint = ' (does the server want TLS? use rediss://)'
            raise self._error('cannot connect to %s: %s%s' % (self.broker.endpoint, reason, hint), option='broker_url',
                              lost=True)
        except redis.ResponseError as exc:
            reason = self._reason(exc)
            if self.broker.sentinels and (isinstance(exc, redis.ReadOnlyError) or 'MASTERDOWN' in reason):
                # Sentinel turned the master we talk to into a replica: a failover, worth resolving again.
                raise self._error('%s is no longer the master (a Sentinel failover): %s'
                                  % (self.broker.endpoint, reason), option='broker_url', lost=True)
            if 'DB index' in reason:
                raise self._error('broker_url: Redis database %s does not exist at %s (%s)'
                                  % (self.broker.db, self.broker.endpoint, reason), option='broker_url')
            if 'NOAUTH' in reason or 'WRONGPASS' in reason or 'AUTH' in reason:
                raise self._error('authentication failed at %s: %s' % (self.broker.endpoint, reason),
                                  option='broker_password')
            raise self._error('%s answered an error: %s' % (self.broker.endpoint, reason))
        except redis.RedisError as exc:
            raise self._error('%s: %s' % (self.broker.endpoint, self._reason(exc)))

    def _reason(self, exc):
        return scrub(exc, self.broker.password, self.broker.sentinel_password) or type(exc).__name__

    def _error(self, msg, option=None, lost=False):
        self.broken = self.broken or lost  # nothing more to tidy up on this connection
        return BrokerError(msg, option=option, endpoint=self.broker.endpoint, lost=lost)

    # -- what the layers above share --------------------------------------------------------

    def stream(self, command):
        """A CommandStream of ``command`` (such as 'LRANGE') on a connection of the pool of its own."""
        return CommandStream(self, command)

    def take_all(self, keys, wait):
        """Every element of the lists ``keys`` (where kombu delivers to a queue of ours), removed: waits up to
        ``wait`` seconds for the first one, then takes the rest in one transaction. [] if none came."""
        # BRPOP in slices shorter than the socket timeout, which would read as a dead server.
        first = self.call(self.client.brpop, keys, timeout=max(0.01, min(wait, self.broker.timeout / 2.0)))
        if not first:
            return []
        pipe = self.pipeline(transaction=True)
        for key in keys:
            pipe.lrange(key, 0, -1)
        pipe.delete(*keys)
        rest = [raw for chunk in self.call(pipe.execute)[:-1] for raw in reversed(chunk)]
        return [first[1]] + rest

    def subscribe(self, patterns):
        """A Subscription to the PUB/SUB channels matching ``patterns``."""
        return Subscription(self, patterns)


class CommandStream(object):
    """Commands sent ahead of reading their replies, on a connection of the pool held for this stream alone:
    the server builds the next reply while the caller works on this one. ``close()`` gives the connection
    back (dropping it if a reply is still on its way: it is not fit for others until read)."""

    def __init__(self, connection, command):
        self.connection = connection
        self.command = command
        self.pool = connection.client.connection_pool
        try:
            self.wire = connection.call(self.pool.get_connection)
        except TypeError:  # redis-py before 5.3 wants a command name
            self.wire = connection.call(self.pool.get_connection, command)
        self.pending = 0

    def send(self, *args):
        self.connection.call(self.wire.send_command, self.command, *args)
        self.pending += 1

    def read(self):
        reply = self.connection.call(self.connection.client.parse_response, self.wire, self.command)
        self.pending -= 1
        return reply

    def close(self):
        if self.pending:
            self.wire.disconnect()
        self.pool.release(self.wire)


class Subscription(object):
    """A pattern subscription: ``receive()`` gives the data of the messages published meanwhile."""

    def __init__(self, connection, patterns):
        self.connection = connection
        self.pubsub = connection.client.pubsub(ignore_subscribe_messages=True)
        connection.call(self.pubsub.psubscribe, *patterns)

    def receive(self, wait):
        """The data of the messages that came within ``wait`` seconds (all that are there)."""
        call, timeout = self.connection.call, self.connection.broker.timeout
        message = call(self.pubsub.get_message, timeout=max(0.01, min(wait, timeout / 2.0)))
        out = []
        while message is not None:
            if message.get('type') == 'pmessage':
                out.append(message['data'])
            message = call(self.pubsub.get_message, timeout=0)
        return out

    def close(self):
        self.pubsub.close()
