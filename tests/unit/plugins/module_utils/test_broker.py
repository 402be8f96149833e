# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Broker URL parsing, redaction and the errors of the broker layer. No network."""

from urllib.parse import quote

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils import _broker
from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (
    BrokerError, BrokerURL, broker_argument_spec, broker_from_params, parse_broker_url, scrub,
    ssl_context)

# Distinctive, so that finding it anywhere means it leaked. Only URL-safe characters, so it can
# be pasted raw into a URL; SPECIAL is the one that needs percent-encoding.
SECRET = 'Xq9secretPW7zz'
SPECIAL = 'p@ss:w/rd#?%&' + SECRET
ENCODED = quote(SPECIAL, safe='')


def parse(url, **kwargs):
    return parse_broker_url(url, **kwargs)


def error_of(url, **kwargs):
    with pytest.raises(BrokerError) as info:
        parse_broker_url(url, **kwargs)
    return info.value


def assert_no_secret(error, *secrets):
    secrets = secrets or (SECRET,)
    texts = [str(error), error.msg, repr(error.args), repr(error.details), str(error.endpoint), str(error.option)]
    for secret in secrets:
        for text in texts:
            assert secret not in text, text
            assert secret.lower() not in text.lower(), text


# -- schemes, ports, databases, vhosts ----------------------------------------------------------

@pytest.mark.parametrize('url, transport, tls, port, scheme', [
    ('redis://h', 'redis', False, 6379, 'redis'),
    ('rediss://h', 'redis', True, 6379, 'rediss'),
    ('amqp://h', 'amqp', False, 5672, 'amqp'),
    ('amqps://h', 'amqp', True, 5671, 'amqps'),
    ('pyamqp://h', 'amqp', False, 5672, 'amqp'),
    ('pyamqps://h', 'amqp', True, 5671, 'amqps'),
    ('REDIS://h', 'redis', False, 6379, 'redis'),
    ('AMQPS://h', 'amqp', True, 5671, 'amqps'),
])
def test_schemes_and_default_ports(url, transport, tls, port, scheme):
    broker = parse(url)
    assert (broker.transport, broker.tls, broker.port, broker.scheme, broker.host) == (transport, tls, port, scheme, 'h')
    assert broker.user is None and broker.password is None
    assert broker.timeout == _broker.DEFAULT_CONNECT_TIMEOUT


@pytest.mark.parametrize('url, port', [
    ('redis://h:6380/0', 6380),
    ('rediss://h:16379/0', 16379),
    ('amqp://h:5673//', 5673),
    ('amqps://h:5672//', 5672),
])
def test_explicit_port(url, port):
    assert parse(url).port == port


def test_host_defaults_to_localhost():
    assert parse('redis://').host == 'localhost'
    assert parse('amqp://:5673//').host == 'localhost'
    assert parse('redis://:%s@/2' % SECRET).host == 'localhost'


def test_host_is_lowercased():
    assert parse('redis://Broker.Example.COM/0').host == 'broker.example.com'


@pytest.mark.parametrize('url, db', [
    ('redis://h', 0),
    ('redis://h:6379', 0),
    ('redis://h:6379/', 0),
    ('redis://h:6379/0', 0),
    ('redis://h:6379/7', 7),
    ('redis://h:6379/15', 15),
    ('rediss://h:6379/3', 3),
    ('redis://h:6379//4', 4),
    ('redis://h:6379?db=5', 5),
    ('redis://h:6379?virtual_host=6', 6),
    ('redis://h:6379/2?db=5', 2),  # the path wins, as with kombu
])
def test_redis_db(url, db):
    broker = parse(url)
    assert broker.db == db
    assert broker.endpoint == 'redis%s h:6379 db %d' % ('s' if url.startswith('rediss') else '', db)


@pytest.mark.parametrize('url, shown', [
    ('redis://h:6379/abc', 'abc'),
    ('redis://h:6379/-1', '-1'),
    ('redis://h:6379/1.5', '1.5'),
    ('redis://h:6379/0/extra', '0/extra'),
    ('redis://h:6379?db=x', 'x'),
])
def test_redis_db_must_be_a_number(url, shown):
    error = error_of(url)
    assert error.msg == ("broker_url: the Redis database must be a number (as in redis://host:6379/0), got '%s'"
                         % shown)
    assert error.option == 'broker_url'


def test_redis_db_error_is_shortened():
    error = error_of('redis://h/' + 'x' * 100)
    assert error.msg.endswith("got '%s'" % ('x' * 40))


def test_redis_db_error_with_credentials_does_not_show_them():
    error = error_of('redis://user:%s@h:6379/abc' % SECRET)
    assert "got 'abc'" in error.msg
    assert_no_secret(error)


@pytest.mark.parametrize('url, vhost', [
    ('amqp://h', '/'),
    ('amqp://h:5672', '/'),
    ('amqp://h:5672/', '/'),
    ('amqp://h:5672//', '/'),        # kombu's way of writing the default vhost
    ('amqp://h:5672/%2F', '/'),      # pika's
    ('amqp://h:5672/%2f', '/'),
    ('amqp://h:5672/myvhost', 'myvhost'),
    ('amqp://h:5672//myvhost', '/myvhost'),
    ('amqp://h:5672/%2Fmyvhost', '/myvhost'),
    ('amqp://h:5672/my%20vhost', 'my vhost'),
    ('amqps://guest:guest@h:5671//', '/'),
    ('pyamqp://guest@h//', '/'),
])
def test_amqp_vhost_forms(url, vhost):
    broker = parse(url)
    assert broker.vhost == vhost
    assert broker.facts()['vhost'] == vhost
    assert 'db' not in broker.facts()


# -- credentials ---------------------------------------------------------------------------------

def test_user_and_password():
    broker = parse('amqp://celery:%s@rabbit:5672/prod' % SECRET)
    assert (broker.user, broker.password, broker.host, broker.vhost) == ('celery', SECRET, 'rabbit', 'prod')


@pytest.mark.parametrize('url, password, user', [
    ('amqp://guest:guest@h//', None, None),              # guest/guest: the user would show the password
    ('amqp://guest@h//', 'guest', None),                  # the same through broker_password
    ('redis://celery-prod:celery@h:6379/0', None, None),  # the password inside the user name
    ('amqp://guest:guest2@h//', None, 'guest'),           # the user inside the password: nothing to hide
    ('amqp://guest@h//', None, 'guest'),
    ('amqp://guest:@h//', None, 'guest'),                 # an empty password is in every name; hides nothing
])
def test_the_user_is_left_out_of_the_facts_when_it_holds_the_password(url, password, user):
    broker = parse(url, password=password)
    assert broker.facts()['user'] == user
    assert broker.user_hidden is (user is None)
    assert broker.user == 'guest' or broker.user == 'celery-prod'   # still used to log in


def test_password_only_redis_url():
    broker = parse('redis://:%s@h:6379/0' % SECRET)
    assert broker.user is None
    assert broker.password == SECRET


def test_url_encoded_password_and_user():
    broker = parse('redis://us%%40er%%3Aname:%s@h:6379/1' % ENCODED)
    assert broker.user == 'us@er:name'
    assert broker.password == SPECIAL
    assert broker.db == 1


def test_empty_password_in_url():
    broker = parse('amqp://guest:@h//')
    assert broker.user == 'guest'
    assert broker.password == ''


@pytest.mark.parametrize('url', [
    'redis://:urlpw@h:6379/0',
    'redis://user:urlpw@h:6379/0',
    'redis://h:6379/0',
    'amqp://user:urlpw@h//',
])
def test_broker_password_overrides_the_url(url):
    broker = parse(url, password=SECRET)
    assert broker.password == SECRET
    assert 'urlpw' not in broker.redacted()


def test_broker_password_none_keeps_the_url_password():
    assert parse('redis://:urlpw@h/0', password=None).password == 'urlpw'


# -- IPv6 ----------------------------------------------------------------------------------------

def test_ipv6_host():
    broker = parse('redis://user:%s@[::1]:6380/2' % SECRET)
    assert (broker.host, broker.port, broker.db) == ('::1', 6380, 2)
    assert broker.endpoint == 'redis [::1]:6380 db 2'
    assert broker.redacted() == 'redis://user:***@[::1]:6380/2'


def test_ipv6_host_default_port():
    broker = parse('amqp://[fe80::1]//')
    assert (broker.host, broker.port) == ('fe80::1', 5672)
    assert broker.endpoint == 'amqp [fe80::1]:5672 vhost /'


def test_unbalanced_ipv6_bracket():
    error = error_of('redis://user:%s@[::1:6379/0' % SECRET)
    assert error.msg == 'broker_url: malformed URL (an IPv6 host goes in brackets, as in redis://[::1]:6379/0)'
    assert error.option == 'broker_url'
    assert_no_secret(error)


# -- URL errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize('url', [
    'redis://h:99999/0',
    'redis://h:65536/0',
    'redis://h:abc/0',
    'redis://h:-1/0',
    'redis://user:%s@h:port/0' % SECRET,
    'amqp://user:%s@h:5672x//' % SECRET,
])
def test_bad_port(url):
    error = error_of(url)
    assert error.msg == 'broker_url: the port must be a number from 1 to 65535'
    assert error.option == 'broker_url'
    assert_no_secret(error)


def test_port_zero():
    error = error_of('redis://:%s@h:0/0' % SECRET)
    assert error.msg == 'broker_url: port 0 is not a valid broker port'
    assert error.option == 'broker_url'
    assert_no_secret(error)


@pytest.mark.parametrize('url, scheme', [
    ('kafka://127.0.0.1:9092', 'kafka'),
    ('http://h:6379/0', 'http'),
    ('sqs://', 'sqs'),
    ('redis+socket:///tmp/redis.sock', 'redis+socket'),
    ('Memory://', 'memory'),
])
def test_unknown_scheme(url, scheme):
    error = error_of(url)
    assert error.msg == ("broker_url: unsupported scheme '%s'; use redis://, rediss://, amqp://, amqps:// or "
                         "sentinel://" % scheme)
    assert error.option == 'broker_url'


@pytest.mark.parametrize('url', [
    'user:%s@host://' % SECRET,           # the scheme was left out; kombu's '//' vhost supplies a '://'
    'celery:%s@rabbit:5672://prod' % SECRET.lower(),
    ':%s@h://0' % SECRET,
])
def test_text_before_separator_that_is_no_scheme_is_not_echoed(url):
    error = error_of(url)
    assert error.msg == ("broker_url must start with redis://, rediss://, amqp:// or amqps:// "
                         "(what precedes '://' is not a URL scheme)")
    assert error.option == 'broker_url'
    assert_no_secret(error)


@pytest.mark.parametrize('url', ['127.0.0.1:6379', 'redis:/h:6379/0', 'user:%s@h:6379/0' % SECRET, 'redis'])
def test_missing_separator(url):
    error = error_of(url)
    assert error.msg == ("broker_url must look like redis://host:6379/0 or amqp://user@host:5672/vhost "
                         "(no '://' found)")
    assert error.option == 'broker_url'
    assert_no_secret(error)


@pytest.mark.parametrize('url', [None, ''])
def test_missing_url(url):
    error = error_of(url)
    assert error.msg == 'broker_url is required: set the option or the CELERY_BROKER_URL environment variable'
    assert error.option == 'broker_url'


@pytest.mark.parametrize('url', [
    'redis://:pa/ss%s@h:6379/0' % SECRET,        # '/' in the password, not encoded
    'redis://user:123/%s@h:6379/0' % SECRET,     # ... after a numeric start that parses as a port
    'amqp://user:123/%s@h:5672//' % SECRET,
    'amqp://user:123?%s@h:5672//' % SECRET,      # '?'
    'redis://user:123#%s@h:6379/0' % SECRET,     # '#'
])
def test_unencoded_password_characters(url):
    error = error_of(url)
    assert error.msg == ("broker_url: '@' after the host; if the password holds '/', '?', '#' or '@', "
                         "percent-encode them (%2F, %3F, %23, %40)")
    assert error.option == 'broker_url'
    assert_no_secret(error)


# -- timeouts ------------------------------------------------------------------------------------

@pytest.mark.parametrize('timeout, shown', [
    (0, '0'), (0.0, '0.0'), (-1, '-1'), (-0.5, '-0.5'), (None, 'None'),
    (float('nan'), 'nan'), (float('inf'), 'inf'),
])
def test_timeout_must_be_positive(timeout, shown):
    error = error_of('redis://:%s@h:6379/0' % SECRET, timeout=timeout)
    assert error.msg == 'connect_timeout must be a positive number of seconds, got %s' % shown
    assert error.option == 'connect_timeout'
    assert_no_secret(error)


def test_timeout_is_kept_as_float():
    broker = parse('redis://h/0', timeout=2)
    assert broker.timeout == 2.0 and isinstance(broker.timeout, float)
    assert parse('redis://h/0', timeout=0.25).timeout == 0.25


# -- TLS -----------------------------------------------------------------------------------------

@pytest.fixture
def pem(tmp_path):
    """Existing (not necessarily valid) TLS files."""
    files = {}
    for name in ('ca', 'cert', 'key'):
        path = tmp_path / ('%s.pem' % name)
        path.write_text('not a certificate\n')
        files[name] = str(path)
    return files


def test_tls_defaults():
    broker = parse('rediss://h/0')
    assert broker.tls_verify is True
    assert (broker.tls_ca_file, broker.tls_cert_file, broker.tls_key_file) == (None, None, None)


@pytest.mark.parametrize('value, verify', [
    ('required', True), ('CERT_REQUIRED', True), ('optional', True), ('cert_optional', True),
    ('none', False), ('CERT_NONE', False), ('None', False), (' none ', False),
])
def test_ssl_cert_reqs_query(value, verify):
    assert parse('rediss://h:6379/0?ssl_cert_reqs=%s' % quote(value)).tls_verify is verify


def test_ssl_cert_reqs_bad_value():
    error = error_of('rediss://:%s@h:6379/0?ssl_cert_reqs=maybe' % SECRET)
    assert error.msg == "broker_url: ssl_cert_reqs must be one of required, optional or none, got 'maybe'"
    assert error.option == 'broker_url'
    assert_no_secret(error)


def test_tls_verify_option_overrides_query():
    assert parse('rediss://h/0?ssl_cert_reqs=none', tls_verify=True).tls_verify is True
    assert parse('rediss://h/0?ssl_cert_reqs=required', tls_verify=False).tls_verify is False
    assert parse('amqps://h//', tls_verify=False).tls_verify is False


def test_tls_files_from_query(pem):
    url = 'rediss://h:6379/0?ssl_ca_certs=%s&ssl_certfile=%s&ssl_keyfile=%s&ssl_cert_reqs=required' % (
        quote(pem['ca']), quote(pem['cert']), quote(pem['key']))
    broker = parse(url)
    assert (broker.tls_ca_file, broker.tls_cert_file, broker.tls_key_file) == (pem['ca'], pem['cert'], pem['key'])
    assert broker.tls_verify is True
    assert broker.db == 0


def test_tls_options_win_over_query(pem, tmp_path):
    other = tmp_path / 'other.pem'
    other.write_text('x')
    broker = parse('amqps://h//?ssl_ca_certs=%s' % quote(pem['ca']), tls_ca_file=str(other))
    assert broker.tls_ca_file == str(other)


def test_tls_options(pem):
    broker = parse('amqps://h//', tls_ca_file=pem['ca'], tls_cert_file=pem['cert'], tls_key_file=pem['key'])
    assert (broker.tls_ca_file, broker.tls_cert_file, broker.tls_key_file) == (pem['ca'], pem['cert'], pem['key'])


@pytest.mark.parametrize('option', ['tls_ca_file', 'tls_cert_file', 'tls_key_file'])
@pytest.mark.parametrize('url', ['redis://:%s@h:6379/0' % SECRET, 'amqp://u:%s@h//' % SECRET])
def test_tls_files_on_plaintext_url_refused(pem, option, url):
    error = error_of(url, **{option: pem[option.split('_')[1]]})
    scheme = url.split('://')[0]
    assert error.msg == ('tls_ca_file, tls_cert_file and tls_key_file need a TLS broker_url (rediss:// or amqps://); '
                         'refusing to connect in plaintext to %s' % scheme)
    assert error.option == 'broker_url'
    assert_no_secret(error)


@pytest.mark.parametrize('query', ['ssl_ca_certs', 'ssl_certfile', 'ssl_keyfile'])
def test_tls_files_in_query_of_plaintext_url_refused(pem, query):
    error = error_of('redis://:%s@h:6379/0?%s=%s' % (SECRET, query, quote(pem['ca'])))
    assert 'refusing to connect in plaintext to redis' in error.msg
    assert_no_secret(error)


@pytest.mark.parametrize('option', ['tls_ca_file', 'tls_cert_file', 'tls_key_file'])
def test_missing_tls_file_is_named(tmp_path, pem, option):
    missing = str(tmp_path / 'no-such.pem')
    kwargs = dict(tls_ca_file=pem['ca'], tls_cert_file=pem['cert'], tls_key_file=pem['key'])
    kwargs[option] = missing
    error = error_of('rediss://:%s@h:6379/0' % SECRET, **kwargs)
    assert error.msg == '%s: no such file: %s' % (option, missing)
    assert error.option == option
    assert_no_secret(error)


def test_missing_tls_file_from_query_is_named(tmp_path):
    missing = str(tmp_path / 'ca.pem')
    error = error_of('amqps://u:%s@h//?ssl_ca_certs=%s' % (SECRET, quote(missing)))
    assert error.msg == 'tls_ca_file: no such file: %s' % missing
    assert error.option == 'tls_ca_file'


def test_tls_directory_is_not_a_file(tmp_path):
    error = error_of('rediss://h/0', tls_ca_file=str(tmp_path))
    assert error.msg == 'tls_ca_file: no such file: %s' % tmp_path


def test_tls_key_needs_cert(pem):
    error = error_of('rediss://:%s@h/0' % SECRET, tls_key_file=pem['key'])
    assert error.msg == 'tls_key_file needs tls_cert_file'
    assert error.option == 'tls_key_file'


def test_ssl_context_refuses_unreadable_files(pem):
    broker = parse('rediss://:%s@h:6379/0' % SECRET, tls_ca_file=pem['ca'])
    with pytest.raises(BrokerError) as info:
        ssl_context(broker)
    assert info.value.msg.startswith('tls_ca_file: cannot load %s as PEM CA certificates: ' % pem['ca'])
    assert info.value.option == 'tls_ca_file'
    assert info.value.endpoint == 'rediss h:6379 db 0'
    assert_no_secret(info.value)


def test_ssl_context_names_the_client_certificate_when_that_is_unreadable(pem):
    broker = parse('amqps://u:%s@h//' % SECRET, tls_cert_file=pem['cert'], tls_key_file=pem['key'])
    with pytest.raises(BrokerError) as info:
        ssl_context(broker)
    assert info.value.msg.startswith('tls_cert_file: cannot load the client certificate %s with the key %s'
                                     % (pem['cert'], pem['key']))
    assert info.value.option == 'tls_cert_file'
    assert_no_secret(info.value)


def test_ssl_context_without_verification():
    import ssl
    context = ssl_context(parse('amqps://h//', tls_verify=False))
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False
    context = ssl_context(parse('amqps://h//'))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


# -- no password in any error ------------------------------------------------------------------

ERROR_CASES = [
    dict(url='kafka://u:%s@h:9092' % SECRET),
    dict(url='u:%s@h:6379/0' % SECRET),
    dict(url='u:%s@h://' % SECRET),
    dict(url='redis://u:%s@h:notaport/0' % SECRET),
    dict(url='redis://u:%s@h:123456/0' % SECRET),
    dict(url='redis://u:%s@h:0/0' % SECRET),
    dict(url='redis://u:%s@[::1/0' % SECRET),
    dict(url='redis://u:%s@h:6379/zero' % SECRET),
    dict(url='redis://u:12/%s@h:6379/0' % SECRET),
    dict(url='redis://u:%s@h:6379/0' % SECRET, timeout=0),
    dict(url='redis://u:%s@h:6379/0' % SECRET, timeout=-3),
    dict(url='redis://u:%s@h:6379/0?ssl_cert_reqs=bogus' % SECRET),
    dict(url='redis://u:%s@h:6379/0' % SECRET, tls_ca_file='/etc/hostname'),
    dict(url='rediss://u:%s@h:6379/0' % SECRET, tls_ca_file='/no/such/ca.pem'),
    dict(url='amqp://u:%s@h:5672x//' % SECRET),
    dict(url='redis://u@h:6379/abc', password=SECRET),
    dict(url='redis://u@h:99999/0', password=SECRET),
    dict(url='kafka://u@h', password=SECRET),
    dict(url='redis://u@h:6379/0', password=SECRET, timeout=0),
    dict(url='rediss://u@h:6379/0', password=SECRET, tls_key_file='/no/such/key.pem'),
    dict(url='redis://u:%s@h:6379/abc' % ENCODED),
    dict(url='redis://u:%s@h:port/0' % ENCODED),
    dict(url='kafka://u:%s@h' % ENCODED),
]


@pytest.mark.parametrize('case', ERROR_CASES, ids=lambda case: case['url'].split('@')[-1])
def test_no_error_shows_the_password(case):
    case = dict(case)
    error = error_of(case.pop('url'), **case)
    assert error.option
    assert_no_secret(error, SECRET, SPECIAL, ENCODED)


# -- endpoint, facts, redacted -------------------------------------------------------------------

GOOD_URLS = [
    'redis://:%s@h:6379/0' % SECRET,
    'redis://default:%s@h:6379/3' % SECRET,
    'rediss://user:%s@[2001:db8::1]:6380/1' % SECRET,
    'amqp://celery:%s@rabbit:5672//' % SECRET,
    'amqp://celery:%s@rabbit:5672/prod' % SECRET,
    'amqps://celery:%s@rabbit//' % SECRET,
    'pyamqp://celery:%s@rabbit/%%2F' % SECRET,
    'redis://u:%s@h/0' % ENCODED,
]


@pytest.mark.parametrize('url', GOOD_URLS)
def test_endpoint_facts_redacted_never_show_the_password(url):
    broker = parse(url)
    assert broker.password in (SECRET, SPECIAL)
    for text in (broker.endpoint, repr(broker.facts()), broker.redacted()):
        for secret in (SECRET, SPECIAL, ENCODED):
            assert secret not in text
    assert ':***@' in broker.redacted()
    assert 'password' not in broker.facts()


@pytest.mark.parametrize('url', GOOD_URLS)
def test_broker_password_never_shown(url):
    other = 'Other' + SECRET[::-1]
    broker = parse(url.replace(SECRET, 'x').replace(ENCODED, 'x'), password=other)
    assert broker.password == other
    for text in (broker.endpoint, repr(broker.facts()), broker.redacted()):
        assert other not in text


@pytest.mark.parametrize('url, endpoint, redacted', [
    ('redis://h', 'redis h:6379 db 0', 'redis://h:6379/0'),
    ('redis://:pw@h:6380/4', 'redis h:6380 db 4', 'redis://:***@h:6380/4'),
    ('rediss://u:pw@h/1', 'rediss h:6379 db 1', 'rediss://u:***@h:6379/1'),
    ('redis://u@h/1', 'redis h:6379 db 1', 'redis://u@h:6379/1'),
    ('amqp://guest:guest@h:5672//', 'amqp h:5672 vhost /', 'amqp://guest:***@h:5672/'),
    ('amqps://guest:guest@h/prod', 'amqps h:5671 vhost prod', 'amqps://guest:***@h:5671/prod'),
    ('pyamqp://h', 'amqp h:5672 vhost /', 'amqp://h:5672/'),
    ('amqp://h//prod', 'amqp h:5672 vhost /prod', 'amqp://h:5672/%2Fprod'),
    ('amqp://us%40er:pw@h/a%2Fb', 'amqp h:5672 vhost a/b', 'amqp://us%40er:***@h:5672/a%2Fb'),
])
def test_endpoint_and_redacted(url, endpoint, redacted):
    broker = parse(url)
    assert broker.endpoint == endpoint
    assert broker.redacted() == redacted


@pytest.mark.parametrize('url', [
    'redis://h:6380/4', 'rediss://u:pw@h/1', 'amqp://guest:guest@h:5672//', 'amqps://h/prod', 'amqp://h//prod',
    'amqp://us%40er:pw@h/a%2Fb', 'redis://u:pw@[::1]:6380/2',
])
def test_redacted_parses_back_to_the_same_broker(url):
    broker = parse(url)
    again = parse(broker.redacted())
    for attr in ('transport', 'tls', 'host', 'port', 'user', 'db', 'vhost'):
        assert getattr(again, attr) == getattr(broker, attr), attr


def test_facts():
    assert parse('redis://u:pw@h:6380/2').facts() == dict(transport='redis', tls=False, host='h', port=6380,
                                                          user='u', db=2)
    assert parse('amqps://h//').facts() == dict(transport='amqp', tls=True, host='h', port=5671, user=None,
                                                vhost='/')


# -- module options ------------------------------------------------------------------------------

def test_argument_spec_hides_credentials():
    spec = broker_argument_spec()
    assert spec['broker_url']['no_log'] is True
    assert spec['broker_password']['no_log'] is True
    assert spec['broker_url']['fallback'][1] == ['CELERY_BROKER_URL']
    assert spec['connect_timeout']['default'] == 5.0
    assert set(spec) == {'broker_url', 'broker_password', 'connect_timeout', 'tls_ca_file', 'tls_cert_file',
                         'tls_key_file', 'tls_verify', 'master_name', 'sentinel_password'}
    assert spec['sentinel_password']['no_log'] is True


def test_broker_from_params(pem):
    params = dict(broker_url='amqps://u:urlpw@h:5671/v', broker_password=SECRET, connect_timeout=1.5,
                  tls_ca_file=pem['ca'], tls_cert_file=pem['cert'], tls_key_file=pem['key'], tls_verify=False)
    broker = broker_from_params(params)
    assert (broker.transport, broker.tls, broker.host, broker.port, broker.vhost) == ('amqp', True, 'h', 5671, 'v')
    assert broker.password == SECRET
    assert broker.timeout == 1.5
    assert (broker.tls_ca_file, broker.tls_cert_file, broker.tls_key_file) == (pem['ca'], pem['cert'], pem['key'])
    assert broker.tls_verify is False


def test_broker_from_params_defaults():
    params = dict(broker_url='redis://h/0', broker_password=None, connect_timeout=5.0, tls_ca_file=None,
                  tls_cert_file=None, tls_key_file=None, tls_verify=None)
    broker = broker_from_params(params)
    assert broker.password is None and broker.tls_verify is True


def test_broker_url_constructor_defaults():
    broker = BrokerURL('redis', False, 'h', 6379)
    assert (broker.db, broker.vhost, broker.tls_verify, broker.timeout) == (0, '/', True, 5.0)


# -- helpers -------------------------------------------------------------------------------------

def test_scrub():
    assert scrub('auth failed for %s at h' % SECRET, SECRET) == 'auth failed for ******** at h'
    assert scrub(ValueError('x %s y %s' % (SECRET, 'two')), SECRET, 'two', None, '') == 'x ******** y ********'
    assert scrub('nothing', None) == 'nothing'


def test_broker_error():
    error = BrokerError('boom', option='broker_url', endpoint='redis h:6379 db 0', details=dict(a=1))
    assert str(error) == 'boom' and error.msg == 'boom'
    assert (error.option, error.endpoint, error.details) == ('broker_url', 'redis h:6379 db 0', dict(a=1))
    assert BrokerError('x').details == {}


@pytest.mark.parametrize('reason,option,text', [
    ('[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate chain',
     'tls_ca_file', 'certificate verification failed'),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, certificate is not valid for "
     "'10.0.0.5'", 'tls_ca_file', 'tls_verify: false'),
    ('[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required', 'tls_cert_file', 'tls_key_file'),
    ('[SSL: WRONG_VERSION_NUMBER] wrong version number', 'broker_url', 'does the port speak TLS? (amqps is usually'),
])
def test_tls_failures_name_the_option_to_fix(reason, option, text):
    broker = parse_broker_url('amqps://u:pw@10.0.0.5/')
    message, named = _broker.tls_failure(broker, reason)
    assert named == option and text in message and reason in message


def test_tls_failure_is_none_for_other_reasons_and_plaintext_urls():
    assert _broker.tls_failure(parse_broker_url('rediss://h/0'), 'Connection refused') is None
    assert _broker.tls_failure(parse_broker_url('redis://h/0'), 'certificate verify failed') is None
    message, option = _broker.tls_failure(parse_broker_url('rediss://h/0'), 'SSL: wrong version number')
    assert option == 'broker_url' and 'amqps' not in message
