# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the RabbitMQ management API is looked for: the management port, never the AMQP one; several URLs; what a
quorum queue's arguments and policy mean."""

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._amqp_queues import dead_lettering
from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, parse_broker_url
from ansible_collections.celeryops.fleet.plugins.module_utils._management import Management, default_management_url, management_urls


@pytest.mark.parametrize('url, management', [
    ('amqp://guest:guest@rabbit:5672//', 'http://rabbit:15672'),
    ('amqp://rabbit', 'http://rabbit:15672'),
    ('pyamqp://rabbit:5673/prod', 'http://rabbit:15672'),
    ('amqps://rabbit', 'https://rabbit:15671'),
    ('amqps://rabbit:5671//', 'https://rabbit:15671'),
    ('amqp://[::1]:5672//', 'http://[::1]:15672'),
    ('amqps://u:pw@[fe80::1]//', 'https://[fe80::1]:15671'),
])
def test_default_management_url(url, management):
    broker = parse_broker_url(url)
    result = default_management_url(broker)
    assert result == management
    assert ':%d' % broker.port not in result
    assert 'pw' not in result and 'guest' not in result


@pytest.mark.parametrize('value, urls', [
    (None, []),
    ('', []),
    ('http://a:15672', ['http://a:15672']),
    ('http://a:15672,http://b:15672', ['http://a:15672', 'http://b:15672']),
    (['http://a:15672', 'http://b:15672,http://c:15672'], ['http://a:15672', 'http://b:15672', 'http://c:15672']),
    (['http://a:15672', '', ' '], ['http://a:15672']),
])
def test_management_urls(value, urls):
    assert management_urls(value) == urls


def test_management_tries_each_url_and_keeps_the_one_that_answered():
    broker = parse_broker_url('amqp://guest:guest@rabbit//')
    management = Management(broker, ['http://a:15672/', 'http://ops:hunter22@b:15672'])
    asked = []

    def answer(url, path):
        asked.append(url)
        if 'a:' in url:
            raise OSError('connection refused')
        return b'[]'
    management._open = answer
    assert management.get('/api/queues/x') == [] and management.url == 'http://ops:hunter22@b:15672'
    # The next request goes straight to the URL that answered.
    assert management.get('/api/queues/x') == [] and asked == ['http://a:15672'] + ['http://ops:hunter22@b:15672'] * 2
    # None answers: each URL's reason, no password.

    def refuse(url, path):
        raise OSError('refused by %s' % url)
    management._open = refuse
    with pytest.raises(BrokerError) as raised:
        management.get('/api/queues/x')
    assert 'at http://a:15672: refused' in raised.value.msg and 'at http://ops:********@b:15672: refused' in raised.value.msg
    assert 'hunter22' not in raised.value.msg and 'hunter22' not in str(raised.value.endpoint)


@pytest.mark.parametrize('arguments, policy, limit, dead_letter', [
    ({}, {}, None, None),
    (None, None, None, None),
    ({'x-delivery-limit': 5}, {'delivery-limit': 3}, 3, None),
    ({'x-delivery-limit': 2}, {'delivery-limit': 3}, 2, None),
    ({'x-delivery-limit': True}, {'delivery-limit': 'x'}, None, None),   # not numbers RabbitMQ accepts: not guessed
    ({'x-dead-letter-exchange': 'own'}, {'dead-letter-exchange': 'pol', 'dead-letter-routing-key': 'k'}, None,
     {'exchange': 'own', 'routing_key': 'k', 'strategy': 'at-most-once'}),
    ({'x-dead-letter-exchange': '', 'x-dead-letter-strategy': 'at-least-once'}, {}, None,
     {'exchange': '', 'routing_key': None, 'strategy': 'at-least-once'}),
])
def test_dead_lettering(arguments, policy, limit, dead_letter):
    assert dead_lettering(arguments, policy) == {'delivery_limit': limit, 'dead_letter': dead_letter}
