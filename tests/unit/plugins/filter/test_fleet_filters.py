# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""worker_nodes: the node names of a host's celery_workers, and the failures."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.celeryops.fleet.plugins.filter.fleet import FilterModule, worker_nodes


def test_node_names_default_to_name_at_host_as_the_worker_role_starts_them():
    workers = [{'name': 'default', 'queues': ['celery']}, {'name': 'reports', 'node': 'rep@elsewhere'},
               {'name': 'spare', 'node': None}]
    assert worker_nodes(workers, 'web1') == ['default@web1', 'rep@elsewhere', 'spare@web1']


def test_no_workers_give_no_nodes():
    assert worker_nodes([], 'web1') == []
    assert worker_nodes(None, 'web1') == []
    assert worker_nodes((), 'web1') == []


@pytest.mark.parametrize('workers, host, message', [
    ('default', 'web1', 'worker_nodes: celery_workers must be a list of dicts, got str'),
    ({'name': 'default'}, 'web1', 'worker_nodes: celery_workers must be a list of dicts, got dict'),
    (['default'], 'web1', 'worker_nodes: celery_workers[0] must be a dict, got str'),
    ([{'name': 'a'}, {'queues': ['q']}], 'web1', 'worker_nodes: celery_workers[1] has no name (and no node)'),
    ([{'name': ''}], 'web1', 'worker_nodes: celery_workers[0] has no name (and no node)'),
    ([{'name': 'a', 'node': ''}], 'web1', "worker_nodes: celery_workers[0].node must be a non-empty string, got ''"),
    ([{'name': 'a', 'node': 5}], 'web1', 'worker_nodes: celery_workers[0].node must be a non-empty string, got int'),
    ([{'name': 'a'}], None, 'worker_nodes: the inventory host must be a non-empty string, got NoneType'),
    ([{'name': 'a'}], '', "worker_nodes: the inventory host must be a non-empty string, got ''"),
])
def test_what_is_not_a_list_of_workers_is_named(workers, host, message):
    with pytest.raises(AnsibleFilterError) as caught:
        worker_nodes(workers, host)
    assert str(caught.value) == message


def test_the_filters_are_registered():
    assert sorted(FilterModule().filters()) == ['worker_nodes']
