# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters about the fleet the roles deploy: the node names of a host's workers (docs in the .yml files beside)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError

from ansible_collections.celeryops.fleet.plugins.module_utils._messages import kind


def _is_list(value):
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _text(value):
    return isinstance(value, str) and value != ''


def _shown(value):
    """What a wrong value was, for a message: its type, or '' (an empty string is a str too)."""
    return "''" if value == '' else kind(value)


def worker_nodes(celery_workers, host):
    """The node name of each entry of a host's ``celery_workers``, in order: its ``node``, or NAME@host as the
    worker role starts it (``--hostname``). The one place that default is written."""
    if not _text(host):
        raise AnsibleFilterError('worker_nodes: the inventory host must be a non-empty string, got %s' % _shown(host))
    if celery_workers is None:
        return []
    if not _is_list(celery_workers):
        raise AnsibleFilterError('worker_nodes: celery_workers must be a list of dicts, got %s' % kind(celery_workers))
    nodes = []
    for index, worker in enumerate(celery_workers):
        if not isinstance(worker, Mapping):
            raise AnsibleFilterError('worker_nodes: celery_workers[%d] must be a dict, got %s' % (index, kind(worker)))
        node = worker.get('node')
        if node is None:  # unset, or null
            name = worker.get('name')
            if not _text(name):
                raise AnsibleFilterError('worker_nodes: celery_workers[%d] has no name (and no node)' % index)
            node = '%s@%s' % (name, host)
        elif not _text(node):
            raise AnsibleFilterError('worker_nodes: celery_workers[%d].node must be a non-empty string, got %s'
                                     % (index, _shown(node)))
        nodes.append(node)
    return nodes


class FilterModule(object):

    def filters(self):
        return {'worker_nodes': worker_nodes}
