# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Broker URLs: parsing, redaction, the TLS context, and the error types of every layer.

Private to celeryops.fleet; the API may change between releases.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ansible.module_utils.basic import env_fallback

DEFAULT_CONNECT_TIMEOUT = 5.0

# kombu accepts these aliases; the transport is what the modules care about.
_SCHEMES = {
    'redis': ('redis', False),
    'rediss': ('redis', True),
    'amqp': ('amqp', False),
    'pyamqp': ('amqp', False),
    'amqps': ('amqp', True),
    'pyamqps': ('amqp', True),
}
_DEFAULT_PORTS = {('redis', False): 6379, ('redis', True): 6379, ('amqp', False): 5672, ('amqp', True): 5671}
# Redis Sentinel, as Celery writes it: sentinel://[:password@]host:26379[/db], several separated by ';'.
SENTINEL_SCHEME = 'sentinel'
SENTINEL_PORT = 26379

# TLS settings accepted in the URL query (redis-py/kombu spelling) and as options.
# What a URL scheme may look like (RFC 3986); anything else is not echoed back, as it may be
# the start of a URL whose scheme was left out (``user:password@host://``).
_SCHEME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*$')

_CERT_REQS = {'required': True, 'cert_required': True, 'optional': True, 'cert_optional': True,
              'none': False, 'cert_none': False}


class BrokerError(Exception):
    """The failure type of the layers: a message fit for an operator, plus context.

    ``option`` names the module option at fault, ``endpoint`` the redacted endpoint;
    modules turn it into a single ``fail_json``. ``lost`` marks a broker that went away
    (refused, closed, reset or silent past the timeout): worth reconnecting to while waiting.
    """

    def __init__(self, msg, option=None, endpoint=None, details=None, lost=False):
        super(BrokerError, self).__init__(msg)
        self.msg = msg
        self.option = option
        self.endpoint = endpoint
        self.details = details or {}
        self.lost = lost

    def __str__(self):
        return self.msg


class Refused(BrokerError):
    """Refused before anything was read or changed (a read that would change a queue): not a failure part way."""


class OptionError(BrokerError):
    """An option's value cannot work, found without asking the broker; ``option`` names it. A BrokerError too,
    so that every caller that turns those into a failure (modules, plugins) handles it as well."""


def check_seconds(value, option):
    """Refuse a duration option that is not a finite number above 0: NaN slips through ``<= 0`` and
    would never end a wait, ``inf`` waits forever (or overflows a clock)."""
    if value is None or not 0 < value < float('inf'):
        raise OptionError('%s must be a positive number of seconds, got %s' % (option, value), option=option)
    return value


def broker_argument_spec():
    """Options shared by every module that talks to a broker (doc fragment celeryops.fleet.broker); kombu's
    Redis transport options are _queues.redis_transport_argument_spec()."""
    return dict(
        broker_url=dict(type='str', no_log=True, fallback=(env_fallback, ['CELERY_BROKER_URL'])),
        broker_password=dict(type='str', no_log=True),
        connect_timeout=dict(type='float', default=DEFAULT_CONNECT_TIMEOUT),
        tls_ca_file=dict(type='path'),
        tls_cert_file=dict(type='path'),
        tls_key_file=dict(type='path'),
        tls_verify=dict(type='bool'),
        master_name=dict(type='str'),
        sentinel_password=dict(type='str', no_log=True),
    )


class BrokerURL(object):
    """A parsed broker URL. ``password`` never shows in ``endpoint`` or ``facts()``."""

    def __init__(self, transport, tls, host, port, user=None, password=None, db=0, vhost='/',
                 tls_ca_file=None, tls_cert_file=None, tls_key_file=None, tls_verify=True,
                 timeout=DEFAULT_CONNECT_TIMEOUT, sentinels=None, master_name=None, sentinel_password=None):
        self.transport = transport
        self.tls = tls
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.db = db
        self.vhost = vhost
        self.tls_ca_file = tls_ca_file
        self.tls_cert_file = tls_cert_file
        self.tls_key_file = tls_key_file
        self.tls_verify = tls_verify
        self.timeout = timeout
        # Redis Sentinel: [(host, port)] of the Sentinels and the master's name; host and port are then the
        # first Sentinel's until a connection resolves the master (answered()).
        self.sentinels = sentinels
        self.master_name = master_name
        self.sentinel_password = sentinel_password
        self.sentinel = None      # 'host:port' of the Sentinel that named the master, once one did
        # A failover list (Celery's 'url1;url2'): the BrokerURL of each, in order; [self] for a single URL.
        self.candidates = [self]
        self.answered_index = 0   # which candidate answered (0 until a connection says otherwise)
        self.unreachable = []     # [(endpoint, message)] of the candidates tried before it, that did not answer
        self._facts = None

    def copy(self, **changes):
        """A BrokerURL like this one (its own candidates list: [itself]), with ``changes``."""
        fields = dict((name, getattr(self, name)) for name in (
            'user', 'password', 'db', 'vhost', 'tls_ca_file', 'tls_cert_file', 'tls_key_file', 'tls_verify', 'timeout',
            'sentinels', 'master_name', 'sentinel_password'))
        fields.update(transport=self.transport, tls=self.tls, host=self.host, port=self.port)
        fields.update(changes)
        other = BrokerURL(**fields)
        other.sentinel = self.sentinel
        return other

    def answered(self, target, index=0, unreachable=()):
        """The connection layer says which one answered: ``target`` (candidate ``index`` of a failover list, or the
        master a Sentinel named), after ``unreachable`` [(endpoint, message)] did not. From then on ``endpoint`` names
        it, and the dict facts() gave (also one a result took before connecting) says so."""
        for name in ('tls', 'host', 'port', 'user', 'password', 'db', 'vhost', 'tls_ca_file', 'tls_cert_file',
                     'tls_key_file', 'tls_verify', 'sentinel'):
            setattr(self, name, getattr(target, name))
        self.answered_index = index
        self.unreachable = list(unreachable)
        if self._facts is not None:
            fresh = self._make_facts()
            self._facts.clear()
            self._facts.update(fresh)

    @property
    def scheme(self):
        return {'redis': 'rediss', 'amqp': 'amqps'}[self.transport] if self.tls else self.transport

    @property
    def endpoint(self):
        """Where we connect, for messages: ``redis 127.0.0.1:6379 db 0`` (no credentials).

        Not written as a URL on purpose: Ansible masks any no_log value (the whole
        broker_url) that appears in output, which would blank a password-less URL.
        """
        where = _hostport(self.host, self.port)
        if self.sentinels and not self.sentinel:
            return 'sentinel %s master %s db %s' % (','.join(_hostport(h, p) for h, p in self.sentinels),
                                                    self.master_name, self.db)
        if self.sentinels:
            return '%s %s db %s (master %s named by sentinel %s)' % (
                self.scheme, where, self.db, self.master_name, self.sentinel)
        if self.transport == 'redis':
            return '%s %s db %s' % (self.scheme, where, self.db)
        return '%s %s vhost %s' % (self.scheme, where, self.vhost)

    def redacted(self):
        """The URL with the password replaced by ``***`` (of every URL of a failover list or Sentinel list)."""
        if len(self.candidates) > 1:
            return ';'.join(candidate.redacted() for candidate in self.candidates)
        if self.sentinels:
            auth = (quote(self.user or '', safe='') + (':***' if self.password else '') + '@') if self.user or self.password else ''
            return ';'.join('sentinel://%s%s/%s' % (auth, _hostport(h, p), self.db) for h, p in self.sentinels)
        auth = ''
        if self.user or self.password:
            auth = quote(self.user or '', safe='') + (':***' if self.password else '') + '@'
        host = ('[%s]' % self.host) if ':' in self.host else self.host
        path = str(self.db) if self.transport == 'redis' else ('' if self.vhost == '/' else quote(self.vhost, safe=''))
        return '%s://%s%s:%s/%s' % (self.scheme, auth, host, self.port, path)

    @property
    def user_hidden(self):
        """Whether ``facts()`` leaves the user name out (null) because the password is that name or part of it
        (guest/guest): shown, it would show the password, and Ansible would mask it anyway (any output value
        equal to a no_log option's, broker_password's, reads ``VALUE_SPECIFIED_IN_NO_LOG_PARAMETER``)."""
        return bool(self.user and self.password and self.password in self.user)

    def facts(self):
        """What modules return about the broker: no password, no URL; ``user`` is null when ``user_hidden``.

        Always the same dict: answered() updates it when a connection finds which candidate or which Sentinel
        master answered, so a result that took it before connecting still says which one it was."""
        if self._facts is None:
            self._facts = self._make_facts()
        return self._facts

    def _make_facts(self):
        out = dict(transport=self.transport, tls=self.tls, host=self.host, port=self.port,
                   user=None if self.user_hidden else self.user)
        if self.transport == 'redis':
            out['db'] = self.db
        else:
            out['vhost'] = self.vhost
        if len(self.candidates) > 1:
            out['failover'] = dict(answered=self.answered_index + 1, urls=len(self.candidates),
                                   unreachable=[dict(endpoint=e, error=m) for e, m in self.unreachable])
        if self.sentinels:
            out['sentinel'] = dict(master_name=self.master_name, sentinels=[_hostport(h, p) for h, p in self.sentinels],
                                   answered=self.sentinel)
        return out


def _hostport(host, port):
    return '%s:%s' % (('[%s]' % host) if ':' in host else host, port)


USER_HIDDEN_WARNING = ('broker.user is null: the broker password is the user name (or part of it), so showing the '
                       'user would show the password. Give the broker user a password of its own.')


def _tls_verify_from_query(value):
    key = value.strip().lower()
    if key not in _CERT_REQS:
        raise OptionError("broker_url: ssl_cert_reqs must be one of required, optional or none, got '%s'" % value,
                          option='broker_url')
    return _CERT_REQS[key]


def split_url(url):
    """urlsplit(url), leaving nothing of ``url`` in urlsplit's cache (an lru_cache from Python 3.11, a dict of
    urllib.parse before): the URL holds the password, and an interpreter that runs task after task (Mitogen's)
    would keep it for the tasks that come after."""
    uncached = getattr(urlsplit, '__wrapped__', None)
    if uncached is not None:
        return uncached(url)
    try:
        return urlsplit(url)
    finally:
        urllib.parse.clear_cache()


def parse_broker_url(url, password=None, timeout=DEFAULT_CONNECT_TIMEOUT, tls_ca_file=None,
                     tls_cert_file=None, tls_key_file=None, tls_verify=None, master_name=None, sentinel_password=None):
    """Parse a Celery/kombu broker URL into a BrokerURL, or raise OptionError naming the fault.

    Accepts kombu's own forms, e.g. ``amqp://guest:guest@host:5672//`` for the default vhost; a failover list
    (``url1;url2``, or a list as kombu takes it), all of one transport, its URLs in ``candidates``; and Redis
    Sentinel (``sentinel://[:password@]host:26379[;sentinel://host2:26379]``, the master named by
    ``master_name``), whose password and database come from the first URL, as kombu takes them.
    """
    if not url:
        raise OptionError('broker_url is required: set the option or the CELERY_BROKER_URL environment variable',
                          option='broker_url')
    check_seconds(timeout, 'connect_timeout')
    pieces = [piece.strip() for piece in (url if isinstance(url, (list, tuple)) else str(url).split(';'))]
    pieces = [piece for piece in pieces if piece]
    if not pieces:
        raise OptionError('broker_url holds no URL (only separators)', option='broker_url')
    tls_options = dict(tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file, tls_key_file=tls_key_file,
                       tls_verify=tls_verify)
    parsed = []
    for position, piece in enumerate(pieces):
        try:
            parsed.append(_parse_one(piece, password, timeout, **tls_options))
        except OptionError as error:
            if len(pieces) > 1 and error.option == 'broker_url':
                error.msg = error.msg.replace('broker_url', 'broker_url (URL %d of %d)' % (position + 1, len(pieces)), 1)
            raise
    sentinel = [bool(b.sentinels) for b in parsed]
    if any(sentinel):
        if not all(sentinel):
            raise OptionError('broker_url: a list with sentinel:// URLs must hold only sentinel:// URLs (the Sentinels '
                              'of one master); got %s' % ', '.join(_scheme_of(b) for b in parsed), option='broker_url')
        if not master_name:
            raise OptionError("master_name is required with a sentinel:// broker_url (Celery's "
                              "broker_transport_options={'master_name': ...})", option='master_name')
        first = parsed[0]
        return first.copy(sentinels=[s for b in parsed for s in b.sentinels], master_name=master_name,
                          sentinel_password=sentinel_password)
    for name, value in (('master_name', master_name), ('sentinel_password', sentinel_password)):
        if value:
            raise OptionError('%s is for a sentinel:// broker_url; this one is %s' % (name, _scheme_of(parsed[0])),
                              option=name)
    if len(set(b.transport for b in parsed)) > 1:
        raise OptionError('broker_url: every URL of a failover list must be of one transport (all Redis or all '
                          'RabbitMQ), got %s' % ', '.join(_scheme_of(b) for b in parsed), option='broker_url')
    if len(parsed) == 1:
        return parsed[0]
    primary = parsed[0].copy()
    primary.candidates = parsed
    return primary


def _scheme_of(broker):
    return SENTINEL_SCHEME if broker.sentinels else broker.scheme


def _parse_one(url, password, timeout, tls_ca_file=None, tls_cert_file=None, tls_key_file=None, tls_verify=None):
    """One URL of broker_url (see parse_broker_url)."""
    if '://' not in url:
        raise OptionError("broker_url must look like redis://host:6379/0 or amqp://user@host:5672/vhost "
                          "(no '://' found)", option='broker_url')
    scheme = url.split('://', 1)[0].lower()
    if scheme not in _SCHEMES and scheme != SENTINEL_SCHEME:
        if not _SCHEME_RE.match(scheme) or len(scheme) > 20:
            # Not a scheme at all (e.g. 'user:password@host://'): do not echo it, it may hold the password.
            raise OptionError("broker_url must start with redis://, rediss://, amqp:// or amqps:// "
                              "(what precedes '://' is not a URL scheme)", option='broker_url')
        raise OptionError("broker_url: unsupported scheme '%s'; use redis://, rediss://, amqp://, amqps:// or "
                          "sentinel://" % scheme, option='broker_url')
    sentinel = scheme == SENTINEL_SCHEME
    # Sentinel: TLS to the master when a TLS setting asks for it (kombu: broker_use_ssl); the Sentinels in plaintext.
    transport, tls = _SCHEMES[scheme] if not sentinel else ('redis', None)
    # The messages of urlsplit may quote the netloc, which can hold the password: never pass them on.
    try:
        parts = split_url(url)
    except ValueError:
        raise OptionError("broker_url: malformed URL (an IPv6 host goes in brackets, as in redis://[::1]:6379/0)",
                          option='broker_url') from None
    if '@' in parts.path or '@' in parts.query or '@' in parts.fragment:
        # A password with an unencoded '/', '?' or '#' cuts the URL short: the rest of the password
        # would end up in the port, database, vhost or query, and be echoed or connected to.
        raise OptionError("broker_url: '@' after the host; if the password holds '/', '?', '#' or '@', "
                          "percent-encode them (%2F, %3F, %23, %40)", option='broker_url')
    try:
        port = parts.port
    except ValueError:
        raise OptionError('broker_url: the port must be a number from 1 to 65535', option='broker_url') from None
    host = parts.hostname or 'localhost'
    if port is None:
        port = SENTINEL_PORT if sentinel else _DEFAULT_PORTS[(transport, tls)]
    if port == 0:
        raise OptionError('broker_url: port 0 is not a valid broker port', option='broker_url')
    user = unquote(parts.username) if parts.username else None
    url_password = unquote(parts.password) if parts.password is not None else None
    query = dict((k, v[-1]) for k, v in parse_qs(parts.query).items())

    db, vhost = 0, '/'
    path = parts.path or ''
    if transport == 'redis':
        db_text = path.lstrip('/') or query.get('db') or query.get('virtual_host') or '0'
        if not re.match(r'^\d+$', db_text):
            raise OptionError("broker_url: the Redis database must be a number (as in redis://host:6379/0), got '%s'"
                              % db_text[:40], option='broker_url')
        db = int(db_text)
    else:
        # kombu: 'amqp://host//' and 'amqp://host/' both mean vhost '/'; '/%2F' too.
        rest = path[1:] if path.startswith('/') else path
        vhost = unquote(rest) if rest else '/'

    verify = True
    if 'ssl_cert_reqs' in query:
        verify = _tls_verify_from_query(query['ssl_cert_reqs'])
    if tls_verify is not None:
        verify = tls_verify
    ca_file = tls_ca_file or query.get('ssl_ca_certs')
    cert_file = tls_cert_file or query.get('ssl_certfile')
    key_file = tls_key_file or query.get('ssl_keyfile')
    if sentinel:
        tls = bool(ca_file or cert_file or key_file or tls_verify is not None or 'ssl_cert_reqs' in query)
    if not tls and (ca_file or cert_file or key_file):
        # Also when they came from the URL query (ssl_ca_certs, ssl_certfile, ssl_keyfile): TLS was meant.
        raise OptionError('tls_ca_file, tls_cert_file and tls_key_file need a TLS broker_url (rediss:// or amqps://); '
                          'refusing to connect in plaintext to %s' % scheme, option='broker_url')
    for option, path_value in (('tls_ca_file', ca_file), ('tls_cert_file', cert_file), ('tls_key_file', key_file)):
        if path_value and not os.path.isfile(path_value):
            raise OptionError('%s: no such file: %s' % (option, path_value), option=option)
    if key_file and not cert_file:
        raise OptionError('tls_key_file needs tls_cert_file', option='tls_key_file')

    return BrokerURL(transport, tls, host, port, user=user,
                     password=password if password is not None else url_password,
                     db=db, vhost=vhost, tls_ca_file=ca_file, tls_cert_file=cert_file,
                     tls_key_file=key_file, tls_verify=verify, timeout=float(timeout),
                     sentinels=[(host, port)] if sentinel else None)


def broker_from_params(params):
    """BrokerURL from the shared module options (see broker_argument_spec)."""
    return parse_broker_url(params.get('broker_url'), password=params.get('broker_password'),
                            timeout=params.get('connect_timeout'), tls_ca_file=params.get('tls_ca_file'),
                            tls_cert_file=params.get('tls_cert_file'), tls_key_file=params.get('tls_key_file'),
                            tls_verify=params.get('tls_verify'), master_name=params.get('master_name'),
                            sentinel_password=params.get('sentinel_password'))


def ssl_context(broker, verify=None, client_cert=True):
    """An ssl.SSLContext for a TLS broker, verifying the server unless told not to (``verify``; by default the
    broker's tls_verify). Its management API takes ``client_cert=False``: it authenticates with a password."""
    import ssl
    try:
        context = ssl.create_default_context(cafile=broker.tls_ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise OptionError('tls_ca_file: cannot load %s as PEM CA certificates: %s' % (broker.tls_ca_file, exc),
                          option='tls_ca_file', endpoint=broker.endpoint)
    if not (broker.tls_verify if verify is None else verify):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if broker.tls_cert_file and client_cert:
        try:
            context.load_cert_chain(broker.tls_cert_file, broker.tls_key_file)
        except (ssl.SSLError, OSError) as exc:
            key = ' with the key %s' % broker.tls_key_file if broker.tls_key_file else ''
            raise OptionError('tls_cert_file: cannot load the client certificate %s%s (a PEM certificate, with its key in '
                              'it or in tls_key_file): %s' % (broker.tls_cert_file, key, exc),
                              option='tls_cert_file', endpoint=broker.endpoint)
    return context


# How OpenSSL and Python say that the broker's certificate did not verify, or that the broker
# wanted a certificate of ours.
_CERT_UNTRUSTED = re.compile(r'CERTIFICATE_VERIFY_FAILED|certificate verify failed|hostname mismatch|'
                             r'IP address mismatch', re.IGNORECASE)
_CERT_WANTED = re.compile(r'certificate required|PEER_DID_NOT_RETURN_A_CERTIFICATE', re.IGNORECASE)


def tls_failure(broker, reason, tls_error=False):
    """What a failed connection to a TLS broker means and which option fixes it, as
    ``(text, option)``; None when ``reason`` (a scrubbed library message) is not about TLS.
    ``tls_error``: the library raised an SSL error, whatever its message says."""
    if not broker.tls:
        return None
    if _CERT_UNTRUSTED.search(reason):
        return ("certificate verification failed (%s); set tls_ca_file to the CA that signed the broker's certificate "
                "(ssl_ca_certs in the URL), or tls_verify: false to connect without verifying" % reason, 'tls_ca_file')
    if _CERT_WANTED.search(reason):
        return ('the broker wants a client certificate (%s); set tls_cert_file and tls_key_file' % reason,
                'tls_cert_file')
    if tls_error or 'ssl' in reason.lower() or 'tls' in reason.lower():
        usual = ' (amqps is usually on port 5671)' if broker.transport == 'amqp' else ''
        return 'the TLS handshake failed (does the port speak TLS?%s): %s' % (usual, reason), 'broker_url'
    return None


def scrub(text, *secrets):
    """Remove secrets from a text that came from a library (exception messages, reprs)."""
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, '********')
    return text


# Setting names whose values are secrets (as Celery's own filter_hidden_settings judges them).
_SECRET_KEY = re.compile(r'pass|secret|token|signature|credential|api_?key|private_?key|security_key', re.IGNORECASE)
_URL_PASSWORD = re.compile(r'(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?P<tail>@)', re.IGNORECASE)


def passwords_in_urls(text):
    """The passwords written into URLs in ``text`` (``scheme://user:password@``), and the pieces of each
    between '/', '?' and '#', where an unencoded one would cut the URL short: what parsing it would echo."""
    found = set()
    for match in _URL_PASSWORD.finditer(str(text)):
        password = match.group('password')
        found.add(password)
        found.update(piece for piece in re.split(r'[/?#]', password) if len(piece) >= 6)
    return sorted(found, key=len, reverse=True)


def redact_secrets(value, *secrets):
    """A copy of ``value`` (worker replies: stats, conf) with secrets masked: values of keys
    that name a secret, passwords inside URLs, and the given secret strings."""
    if isinstance(value, dict):
        return dict((k, '********' if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, '', [], {})
                     and not isinstance(v, (bool, int, float)) else redact_secrets(v, *secrets))
                    for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v, *secrets) for v in value]
    if isinstance(value, str):
        return scrub(_URL_PASSWORD.sub(r'\g<head>********\g<tail>', value), *secrets)
    return value
