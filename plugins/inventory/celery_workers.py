# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: celery_workers
short_description: The Celery workers that answer on a broker, as inventory hosts
version_added: 0.1.0
description:
  - Asks every worker on the broker for C(ping), C(stats) and C(active_queues) at once (Celery's remote control,
    without the Celery app), and makes one inventory host per worker host name, the part after C(@) in a node
    name such as C(default@web1). Several nodes on one machine make one host.
  - Only a valid host name becomes a host, as any broker client can start a worker with any name and playbooks
    connect to these hosts with the operator's credentials. The host part must be an RFC 1123 host name (labels of
    letters, digits and hyphens, none starting or ending with a hyphen, 63 characters at most, 253 in all) or an
    IP address; other nodes (such as C(w@-oProxyCommand=...), which ssh would read as an option) are skipped with
    a warning. O(hosts) restricts the hosts further to those you name.
  - Host variables (prefixed C(celery_)) C(celery_nodes) lists the host's nodes, each with C(name), C(queues),
    C(concurrency) and C(pid); C(celery_queues) is every queue the host's nodes consume.
  - Every host is in the group C(celery_workers), and in C(celery_queue_<queue>) for each queue it consumes
    (characters that cannot be in a group name become C(_)).
  - C(compose), C(groups) and C(keyed_groups) add variables and groups, and the result can be cached.
  - "The configuration file must end in C(.yml) or C(.yaml) and hold C(plugin: celeryops.fleet.celery_workers)."
extends_documentation_fragment:
  - constructed
  - inventory_cache
  - celeryops.fleet.broker
  - celeryops.fleet.redis_transport
options:
  plugin:
    description: The name of this plugin; this file is for it.
    required: true
    type: str
    choices: [celeryops.fleet.celery_workers]
  broker_url:
    description:
      - The Celery broker URL, as in C(CELERY_BROKER_URL) or Celery's C(broker_url) setting, such as
        C(redis://host:6379/0) or C(amqp://user@host:5672/vhost). kombu's C(amqp://host:5672//) form for the default
        vhost is accepted.
      - Keep a password out of the file with O(broker_password) from a vault, or the environment.
    type: str
    env:
      - name: CELERY_BROKER_URL
  timeout:
    description:
      - Seconds to collect the workers' replies, in all. Without O(expected_count) the whole time is used, as nobody
        can tell when the last worker has answered.
    type: float
    default: 1.0
  expected_count:
    description:
      - How many workers (nodes) there should be. Collection stops as soon as that many answered.
    type: int
  hosts:
    description:
      - Glob patterns (fnmatch-style, like V(web*.example.com) or V(10.0.1.*)) of the hosts that may be in the
        inventory, compared without regard to case. A worker whose host matches none of them is skipped with a
        warning; an empty list allows no host.
      - Without it, every worker with a valid host name makes a host. Set it when others can connect to the broker.
    type: list
    elements: str
requirements:
  - redis (for a Redis broker) or pika (for RabbitMQ) on the controller; not celery or kombu
"""

EXAMPLES = r"""
# fleet.celery_workers.yml
plugin: celeryops.fleet.celery_workers
broker_url: redis://broker.internal:6379/0
timeout: 2
hosts: ["web*.internal", "10.0.1.*"]
compose:
  ansible_host: inventory_hostname
keyed_groups:
  - key: celery_nodes | map(attribute='concurrency') | max | string
    prefix: concurrency

# ansible-inventory -i fleet.celery_workers.yml --graph
# @all:
#   |--@celery_workers:
#   |  |--web1
#   |  |--web2
#   |--@celery_queue_default:
#   |  |--web1
#   |--@celery_queue_reports:
#   |  |--web2
"""

import fnmatch
import ipaddress
import re

from ansible.errors import AnsibleParserError
from ansible.inventory.group import to_safe_group_name
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.display import Display
from ansible.utils.unsafe_proxy import wrap_var

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (
    BrokerError, OptionError, broker_argument_spec, broker_from_params, check_seconds)
from ansible_collections.celeryops.fleet.plugins.module_utils._control import (
    INSPECT_COMMANDS, Control, Expectation)
from ansible_collections.celeryops.fleet.plugins.module_utils._module import missing_library
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import redis_layout, redis_transport_argument_spec
from ansible_collections.celeryops.fleet.plugins.module_utils._workers import node_state

ALL_GROUP = 'celery_workers'
QUEUE_GROUP = 'celery_queue_%s'
SECTIONS = ('ping', 'stats', 'active_queues')
# One label of an RFC 1123 host name.
HOST_LABEL = re.compile(r'(?!-)[A-Za-z0-9-]{1,63}(?<!-)')

display = Display()


def node_facts(state):
    """What the inventory keeps of one node's state (_workers.node_state): name, queues, the pool size it
    reports, pid."""
    return dict(name=state['node'], queues=state['queues'], concurrency=state['max_concurrency'], pid=state['pid'])


def hosts_of(nodes):
    """inventory host -> its nodes (node names split at the first '@', as Celery does)."""
    hosts = {}
    for node in sorted(nodes, key=lambda n: n['name']):
        name, at, host = node['name'].partition('@')
        hosts.setdefault(host if at else name, []).append(node)
    return hosts


def is_host_name(name):
    """Whether ``name`` is an RFC 1123 host name or an IP address: never an option (``-o...``), a
    user@host, or anything else a connection would read as more than a host."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return len(name) <= 253 and all(HOST_LABEL.fullmatch(label) for label in name.split('.'))
    return '%' not in name  # an IPv6 scope (fe80::1%eth0) is free text


def refusal(host, patterns=None):
    """Why ``host`` may not be an inventory host (None if it may): not a host name, or, with
    ``patterns`` (the hosts option), matching none of them."""
    if not is_host_name(host):
        return 'its host %r is not a valid host name (RFC 1123) or IP address' % host
    if patterns is not None and not any(fnmatch.fnmatchcase(host.lower(), p.lower()) for p in patterns):
        return 'its host %r matches none of hosts (%s)' % (host, ', '.join(patterns) or 'an empty list')
    return None


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):

    NAME = 'celeryops.fleet.celery_workers'

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith(('.yml', '.yaml'))

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option('cache') and cache
        update_cache = self.get_option('cache') and not cache
        nodes = None
        if use_cache:
            try:
                nodes = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if nodes is None:
            nodes = self._discover()
        if update_cache:
            self._cache[cache_key] = nodes
        self._populate(nodes)

    def _discover(self):
        """Every node that answers: [node_facts(...)], sorted by name."""
        # The broker and transport options, read as the modules read theirs.
        options = dict((name, self.get_option(name))
                       for name in list(broker_argument_spec()) + list(redis_transport_argument_spec()))
        missing = missing_library(options)
        if missing:
            raise AnsibleParserError('%s needs the %s Python library on the controller' % (self.NAME, missing[0]))
        try:
            timeout, count = self.get_option('timeout'), self.get_option('expected_count')
            check_seconds(timeout, 'timeout')
            if count is not None and count < 1:
                raise OptionError('expected_count must be 1 or more, got %s' % count, option='expected_count')
            control = Control(broker_from_params(options), redis_layout(options))
            try:
                replies = control.request(dict((s, INSPECT_COMMANDS[s]) for s in SECTIONS), Expectation(count=count),
                                          timeout=timeout)
            finally:
                control.close()
        except BrokerError as error:
            raise AnsibleParserError('%s: %s' % (self.NAME, error.msg))
        if replies.undecodable:
            display.warning('%s: skipped %d replies that could not be read (not JSON, or not shaped as Celery\'s)'
                            % (self.NAME, replies.undecodable))
        return [node_facts(node_state(replies, node)) for node in sorted(replies.nodes('ping'))]

    def _populate(self, nodes):
        strict = self.get_option('strict')
        self.inventory.add_group(ALL_GROUP)
        for host, host_nodes in sorted(hosts_of(nodes).items()):
            why = refusal(host, self.get_option('hosts'))
            if why:
                # repr: the name is the worker's word, and must not write on the operator's terminal.
                for node in host_nodes:
                    display.warning('%s: skipped worker node %r: %s' % (self.NAME, node['name'], why))
                continue
            queues = sorted(set(q for node in host_nodes for q in node['queues']))
            self.inventory.add_host(host, group=ALL_GROUP)
            # What workers report is data, never a template.
            self.inventory.set_variable(host, 'celery_nodes', wrap_var(host_nodes))
            self.inventory.set_variable(host, 'celery_queues', wrap_var(queues))
            for queue in queues:
                group = self.inventory.add_group(to_safe_group_name(QUEUE_GROUP % queue, force=True, silent=True))
                self.inventory.add_child(group, host)
            hostvars = self.inventory.get_host(host).get_vars()
            self._set_composite_vars(self.get_option('compose'), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option('groups'), hostvars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option('keyed_groups'), hostvars, host, strict=strict)
