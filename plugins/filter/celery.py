# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters: decode a raw Celery message from its headers, split a node name (docs in the .yml files beside)."""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.celeryops.fleet.plugins.module_utils._messages import (
    decode_envelope, describe_message, kind)


def _mapping(value, what):
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AnsibleFilterError('decode_message: %s must be a dict, got %s' % (what, kind(value)))
    return dict(value)


def decode_message(value, headers=None, properties=None):
    """A Redis list element (kombu's JSON envelope), a message of the RabbitMQ management API, or an AMQP
    body with its ``headers`` and ``properties``: decoded from the headers, never unpickled."""
    message = _decode(value, headers, properties)
    if 'error' in message:
        raise AnsibleFilterError('decode_message: %s' % message['error'])
    return message


def _decode(value, headers, properties):
    if headers is not None or properties is not None:
        properties = _mapping(properties, 'properties')
        envelope = {'content-type': properties.get('content_type'), 'body': value}
        return describe_message(_mapping(headers, 'headers'), properties, envelope)
    if isinstance(value, Mapping) and 'payload' in value and isinstance(value.get('properties'), Mapping):
        # GET /api/queues/<vhost>/<queue>/get (rabbitmqadmin get): payload and AMQP properties.
        properties = dict(value['properties'])
        if value.get('payload_encoding') == 'base64':
            properties['body_encoding'] = 'base64'
        envelope = {'content-type': properties.get('content_type'), 'body': value['payload'],
                    'properties': properties}
        return describe_message(_mapping(properties.get('headers'), 'properties.headers'), properties, envelope)
    return decode_envelope(value)


def _split_node(value, filter_name):
    if not isinstance(value, str):
        raise AnsibleFilterError("%s: expected a node name like 'worker1@host', got %s"
                                 % (filter_name, kind(value)))
    name, at, host = value.partition('@')
    # As Celery's nodesplit: without '@' the whole string is the host.
    return (name, host) if at else (None, value)


def node_host(value):
    """'worker1@web1' -> 'web1'."""
    return _split_node(value, 'node_host')[1]


def node_name(value):
    """'worker1@web1' -> 'worker1'."""
    return _split_node(value, 'node_name')[0]


class FilterModule(object):

    def filters(self):
        return {'decode_message': decode_message, 'node_host': node_host, 'node_name': node_name}
