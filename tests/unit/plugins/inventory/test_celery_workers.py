# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the inventory keeps of each worker's replies, and how nodes become hosts."""

from ansible_collections.celeryops.fleet.plugins.inventory.celery_workers import hosts_of, node_facts


def test_node_facts_from_stats_and_active_queues():
    stats = {'pid': 42, 'pool': {'max-concurrency': 4, 'processes': [43, 44]}}
    queues = [{'name': 'b', 'routing_key': 'b'}, {'name': 'a'}, {'name': 'a'}, 'junk', {'exchange': 'x'}]
    assert node_facts('w1@web1', stats, queues) == dict(name='w1@web1', queues=['a', 'b'], concurrency=4, pid=42)
    # A node that did not answer a section still gets a host.
    assert node_facts('w1@web1', None, None) == dict(name='w1@web1', queues=[], concurrency=None, pid=None)
    assert node_facts('w1@web1', {'pool': 'N/A'}, [])['concurrency'] is None


def test_hosts_group_nodes_by_the_part_after_the_first_at():
    nodes = [dict(name='w2@web1'), dict(name='w1@web1'), dict(name='x@web2'), dict(name='bare'), dict(name='a@b@c')]
    assert hosts_of(nodes) == {'web1': [dict(name='w1@web1'), dict(name='w2@web1')], 'web2': [dict(name='x@web2')],
                               'bare': [dict(name='bare')], 'b@c': [dict(name='a@b@c')]}
