# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the inventory keeps of each worker's replies, and how nodes become hosts."""

from ansible_collections.celeryops.fleet.plugins.inventory.celery_workers import (
    hosts_of, is_host_name, node_facts, refusal)
from ansible_collections.celeryops.fleet.plugins.module_utils._control import Replies
from ansible_collections.celeryops.fleet.plugins.module_utils._workers import node_state


def facts(node, stats, active_queues):
    """node_facts of the node's state read from replies holding ``stats`` and ``active_queues`` (None: not answered)."""
    replies = Replies(['ping', 'stats', 'active_queues'])
    replies.add('ping', node, {'ok': 'pong'})
    for command, value in (('stats', stats), ('active_queues', active_queues)):
        if value is not None:
            replies.add(command, node, value)
    return node_facts(node_state(replies, node))


def test_node_facts_from_stats_and_active_queues():
    stats = {'pid': 42, 'pool': {'max-concurrency': 4, 'processes': [43, 44]}}
    queues = [{'name': 'b', 'routing_key': 'b'}, {'name': 'a'}, {'name': 'a'}, 'junk', {'exchange': 'x'}]
    assert facts('w1@web1', stats, queues) == dict(name='w1@web1', queues=['a', 'b'], concurrency=4, pid=42)
    # A node that did not answer a section still gets a host.
    assert facts('w1@web1', None, None) == dict(name='w1@web1', queues=[], concurrency=None, pid=None)
    assert facts('w1@web1', {'pool': 'N/A'}, [])['concurrency'] is None


def test_hosts_group_nodes_by_the_part_after_the_first_at():
    nodes = [dict(name='w2@web1'), dict(name='w1@web1'), dict(name='x@web2'), dict(name='bare'), dict(name='a@b@c')]
    assert hosts_of(nodes) == {'web1': [dict(name='w1@web1'), dict(name='w2@web1')], 'web2': [dict(name='x@web2')],
                               'bare': [dict(name='bare')], 'b@c': [dict(name='a@b@c')]}


def test_only_host_names_and_ip_addresses_make_hosts():
    for name in ['web1', 'web-1.example.com', 'WEB1.Example', '1web', 'a' * 63, '.'.join(['a' * 63] * 3 + ['a' * 61]),
                 '10.0.0.1', '::1', 'fe80::1', '2001:db8::8a2e:370:7334']:
        assert is_host_name(name), name
    for name in ['', '-oProxyCommand=touch x', '-web1', 'web1-', 'web-.example', 'a..b', 'a.b.', '.a', 'a' * 64,
                 '.'.join(['a' * 63] * 4), 'x@attacker.example', 'web_1', 'web 1', 'web1\n', 'web1;id', 'wéb1',
                 'web\u0661', '[::1]', 'fe80::1%eth0', 'fe80::1%-oProxyCommand=x', '10.0.0.1/8', '$(id)']:
        assert not is_host_name(name), name


def test_refusal_names_the_host_safely_and_applies_the_allow_list():
    assert refusal('web1') is None and refusal('web1', ['web*']) is None
    assert refusal('WEB1.example', ['web?.EXAMPLE']) is None  # host names have no case
    assert refusal('10.0.1.7', ['10.0.1.*']) is None
    assert refusal('-oProxyCommand=touch x') == "its host '-oProxyCommand=touch x' is not a valid host name (RFC 1123) or IP address"
    # Control characters are shown escaped, never written to the terminal as they are.
    assert '\\x1b[2J' in refusal('a\x1b[2J') and '\x1b' not in refusal('a\x1b[2J')
    assert refusal('attacker.example', ['web*', '10.*']) == "its host 'attacker.example' matches none of hosts (web*, 10.*)"
    assert refusal('web1', []) == "its host 'web1' matches none of hosts (an empty list)"
    # An invalid name is refused even where a pattern would match it.
    assert refusal('-oX=y', ['*']) is not None
