# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the RabbitMQ management API is looked for: the management port, never the AMQP one."""

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import parse_broker_url
from ansible_collections.celeryops.fleet.plugins.module_utils._management import default_management_url


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
