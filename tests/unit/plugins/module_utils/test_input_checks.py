# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shared checks of option values: each refusal names the option. No network."""

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, check_seconds
from ansible_collections.celeryops.fleet.plugins.module_utils._control import check_node_names
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import kind
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import check_management_url


@pytest.mark.parametrize('value', [0, -1, float('nan'), float('inf'), None])
def test_check_seconds_refuses_what_would_never_end_or_never_wait(value):
    with pytest.raises(BrokerError) as info:
        check_seconds(value, 'wait_timeout')
    assert info.value.option == 'wait_timeout'
    assert info.value.msg == 'wait_timeout must be a positive number of seconds, got %s' % value


@pytest.mark.parametrize('value', [0.001, 1, 3600.0])
def test_check_seconds_passes_finite_positive_values(value):
    assert check_seconds(value, 'timeout') == value


@pytest.mark.parametrize('node, complaint', [
    ('', 'a node name is empty'),
    ('   ', 'a node name is empty'),
    ('worker1', "'worker1' is not a node name like worker1@host"),
    ('@host', "'@host' is not a node name"),
    ('w1@', "'w1@' is not a node name"),
    (' w1@host', "' w1@host' starts or ends with whitespace"),
    ('w1@host\n', 'starts or ends with whitespace'),
    ('w[12@host', "'w[12@host' is not a valid pattern: '[' without a closing ']'"),
    ('*@web[1', "is not a valid pattern"),
])
def test_check_node_names_refuses(node, complaint):
    with pytest.raises(BrokerError) as info:
        check_node_names(['ok@host', node], 'expected_nodes')
    assert info.value.option == 'expected_nodes'
    assert info.value.msg.startswith('expected_nodes: ') and complaint in info.value.msg


def test_check_node_names_passes_names_and_patterns():
    check_node_names(['w1@host', 'a@b@c', '*@web1', 'w[12]@host', '*', 'celery@web-1.example.com'], 'nodes')
    check_node_names(None, 'nodes')


@pytest.mark.parametrize('url, complaint', [
    ('localhost:15672', 'must be an http:// or https:// URL'),
    ('amqp://guest:pw@rabbit:5672//', 'must be an http:// or https:// URL'),
    ('http://', 'must be an http:// or https:// URL'),
    ('http://rabbit:99999', 'a port from 1 to 65535'),
    ('http://rabbit:0', 'a port from 1 to 65535'),
    ('http://[::1', 'an IPv6 host in brackets'),
])
def test_check_management_url_refuses_without_echoing(url, complaint):
    with pytest.raises(BrokerError) as info:
        check_management_url(url)
    assert info.value.option == 'management_url'
    assert complaint in info.value.msg and 'pw' not in info.value.msg


@pytest.mark.parametrize('url', ['http://rabbit:15672', 'https://rabbit.internal:15671/prefix/', 'http://[::1]:15672'])
def test_check_management_url_passes(url):
    check_management_url(url)


def test_kind_names_the_plain_type_of_template_subclasses():
    class TaggedInt(int):
        pass

    class LazyList(list):
        pass

    assert [kind(v) for v in (TaggedInt(3), LazyList(), {}, 'x', None, 2.5, True)] == [
        'int', 'list', 'dict', 'str', 'NoneType', 'float', 'bool']
