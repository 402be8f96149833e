# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Failover lists (url1;url2) and Redis Sentinel URLs (sentinel://...): parsing, redaction, facts. No network."""

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (
    BrokerError, OptionError, broker_argument_spec, broker_from_params, parse_broker_url, redact_secrets)
from ansible_collections.celeryops.fleet.plugins.module_utils._module import missing_library

PW1, PW2, PW3 = 'firstPWq81x', 'secondPWz27y', 'sentinelPWk55w'


def error_of(url, **kwargs):
    with pytest.raises(OptionError) as info:
        parse_broker_url(url, **kwargs)
    return info.value


def test_single_url_is_its_own_only_candidate_and_facts_unchanged():
    broker = parse_broker_url('redis://h:6380/2')
    assert broker.candidates == [broker]
    assert broker.facts() == dict(transport='redis', tls=False, host='h', port=6380, user=None, db=2)


@pytest.mark.parametrize('url', ['redis://:%s@h1:6379/1;redis://u:%s@h2:6380/1' % (PW1, PW2),
                                 ' redis://:%s@h1:6379/1 ; redis://u:%s@h2:6380/1 ;' % (PW1, PW2),
                                 ['redis://:%s@h1:6379/1' % PW1, 'redis://u:%s@h2:6380/1' % PW2]])
def test_failover_list_in_order_with_each_password(url):
    broker = parse_broker_url(url)
    assert [(c.host, c.port, c.password) for c in broker.candidates] == [('h1', 6379, PW1), ('h2', 6380, PW2)]
    assert broker.host == 'h1'
    assert broker.redacted() == 'redis://:***@h1:6379/1;redis://u:***@h2:6380/1'
    facts = broker.facts()
    assert facts['failover'] == dict(answered=1, urls=2, unreachable=[])
    for text in (broker.endpoint, repr(facts), broker.redacted()):
        assert PW1 not in text and PW2 not in text


def test_answered_updates_the_facts_a_result_already_holds():
    broker = parse_broker_url('amqp://u:%s@r1:5672//;amqps://u:%s@r2//' % (PW1, PW2))
    facts = broker.facts()   # as a module's result takes it, before connecting
    broker.answered(broker.candidates[1], 1, [('amqp r1:5672 vhost /', 'refused')])
    assert facts is broker.facts()
    assert (facts['host'], facts['port'], facts['tls']) == ('r2', 5671, True)
    assert facts['failover'] == dict(answered=2, urls=2, unreachable=[dict(endpoint='amqp r1:5672 vhost /', error='refused')])
    assert broker.endpoint == 'amqps r2:5671 vhost /' and broker.password == PW2
    # The candidates stay as parsed: a reconnect starts again from the first.
    assert broker.candidates[0].host == 'r1'


def test_broker_password_applies_to_every_url():
    broker = parse_broker_url('redis://:%s@h1/0;redis://h2/0' % PW1, password=PW3)
    assert [c.password for c in broker.candidates] == [PW3, PW3]


@pytest.mark.parametrize('url', ['redis://h/0;amqp://h//', 'amqp://h//;rediss://h/0'])
def test_failover_list_of_mixed_transports_refused(url):
    error = error_of(url)
    assert error.option == 'broker_url' and 'one transport' in error.msg


def test_failover_list_may_mix_tls_and_plaintext_of_one_transport():
    broker = parse_broker_url('redis://h1/0;rediss://h2/0')
    assert [c.tls for c in broker.candidates] == [False, True]


def test_a_bad_url_in_a_list_is_named_by_position_without_its_password():
    error = error_of('redis://:%s@h1/0;redis://:%s@h2:notaport/0' % (PW1, PW2))
    assert error.option == 'broker_url' and 'URL 2 of 2' in error.msg
    assert PW1 not in error.msg and PW2 not in error.msg


@pytest.mark.parametrize('url', [';', ' ; ;', []])
def test_separators_only_refused(url):
    assert error_of(url).option == 'broker_url'


def test_sentinel_list_as_celery_writes_it():
    url = 'sentinel://:%s@s1:26379/3;sentinel://s2:26380/3;sentinel://s3' % PW1
    broker = parse_broker_url(url, master_name='mymaster', sentinel_password=PW3)
    assert broker.transport == 'redis' and broker.tls is False
    assert broker.sentinels == [('s1', 26379), ('s2', 26380), ('s3', 26379)]
    assert broker.candidates == [broker]   # one set of Sentinels, not a failover list
    assert (broker.master_name, broker.sentinel_password, broker.password, broker.db) == ('mymaster', PW3, PW1, 3)
    assert broker.endpoint == 'sentinel s1:26379,s2:26380,s3:26379 master mymaster db 3'
    facts = broker.facts()
    assert facts['sentinel'] == dict(master_name='mymaster', sentinels=['s1:26379', 's2:26380', 's3:26379'], answered=None)
    target = broker.copy(host='10.0.0.5', port=6390)
    target.sentinel = 's2:26380'
    broker.answered(target)
    assert (facts['host'], facts['port'], facts['sentinel']['answered']) == ('10.0.0.5', 6390, 's2:26380')
    assert broker.endpoint == 'redis 10.0.0.5:6390 db 3 (master mymaster named by sentinel s2:26380)'
    for text in (broker.endpoint, repr(facts), broker.redacted()):
        assert PW1 not in text and PW3 not in text


def test_sentinel_needs_master_name():
    error = error_of('sentinel://s1:26379')
    assert error.option == 'master_name'


@pytest.mark.parametrize('option', ['master_name', 'sentinel_password'])
def test_sentinel_options_refused_without_sentinel(option):
    error = error_of('redis://h/0', **{option: 'x'})
    assert error.option == option and 'sentinel://' in error.msg


def test_sentinel_mixed_with_redis_refused():
    error = error_of('sentinel://s1;redis://h/0', master_name='m')
    assert error.option == 'broker_url' and 'only sentinel://' in error.msg


def test_sentinel_tls_to_the_master_when_a_tls_option_is_set():
    assert parse_broker_url('sentinel://s1', master_name='m', tls_verify=False).tls is True
    assert parse_broker_url('sentinel://s1?ssl_cert_reqs=none', master_name='m').tls is True
    assert parse_broker_url('sentinel://s1', master_name='m').tls is False


def test_options_reach_the_parser():
    spec = broker_argument_spec()
    assert spec['sentinel_password']['no_log'] is True and 'master_name' in spec
    broker = broker_from_params(dict(broker_url='sentinel://s1', master_name='m', sentinel_password=PW3,
                                     connect_timeout=2.0))
    assert (broker.master_name, broker.sentinel_password, broker.timeout) == ('m', PW3, 2.0)


def test_every_password_of_a_list_masked_in_library_text():
    url = 'redis://:%s@h1/0;redis://u:%s@h2/0' % (PW1, PW2)
    text = redact_secrets('could not use %s' % url)
    assert PW1 not in text and PW2 not in text


def test_sentinel_url_needs_the_redis_library_checked():
    # A sentinel:// URL is a Redis broker: the module checks that redis-py imports (None: it does).
    assert missing_library(dict(broker_url='sentinel://s1')) is None


def test_errors_are_broker_errors():
    assert isinstance(error_of('redis://h;amqp://h'), BrokerError)
