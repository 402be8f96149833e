# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""decode_message, node_host and node_name: the input forms and the failures."""

import base64
import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.celeryops.fleet.plugins.filter.celery import FilterModule, decode_message, node_host, node_name

HEADERS = dict(task='proj.add', id='abc', retries=1, argsrepr='(1, 2)', kwargsrepr='{}', eta=None)
ENVELOPE = {'body': base64.b64encode(b'[[1, 2], {}, {}]').decode(), 'content-type': 'application/json',
            'content-encoding': 'utf-8', 'headers': HEADERS,
            'properties': {'priority': 3, 'body_encoding': 'base64', 'delivery_tag': 'x'}}


def test_every_input_form_gives_the_same_view():
    expected = decode_message(json.dumps(ENVELOPE))
    assert (expected['task'], expected['id'], expected['retries'], expected['argsrepr'], expected['priority']) == (
        'proj.add', 'abc', 1, '(1, 2)', 3)
    assert decode_message(json.dumps(ENVELOPE).encode()) == expected
    assert decode_message(ENVELOPE) == expected
    management = {'payload': '[[1, 2], {}, {}]', 'payload_encoding': 'string',
                  'properties': {'headers': HEADERS, 'priority': 3, 'content_type': 'application/json'}}
    assert decode_message(management) == expected
    properties = {'priority': 3, 'content_type': 'application/json'}
    body = decode_message('[[1, 2], {}, {}]', headers=HEADERS, properties=properties)
    assert body == expected


def test_protocol_1_body_from_the_management_api():
    payload = base64.b64encode(json.dumps({'task': 'old.task', 'id': 'p1', 'args': [1], 'kwargs': {}}).encode())
    got = decode_message({'payload': payload.decode(), 'payload_encoding': 'base64',
                          'properties': {'content_type': 'application/json'}})
    assert (got['task'], got['id'], got['protocol'], got['argsrepr']) == ('old.task', 'p1', 1, '[1]')


@pytest.mark.parametrize('value, headers, message', [
    ('hello', None, 'decode_message: not a kombu message: not JSON (hello)'),
    ('[1, 2]', None, 'decode_message: not a kombu message: a JSON list without "headers" or "body" ([1, 2])'),
    (42, None, 'decode_message: not a kombu message: expected a JSON string, got int'),
    (b'\xff\xfe', None, 'decode_message: not a kombu message: 2 bytes that are not UTF-8 text'),
    ('body', 'oops', 'decode_message: headers must be a dict, got str'),
])
def test_what_is_not_a_message_is_named(value, headers, message):
    with pytest.raises(AnsibleFilterError) as caught:
        decode_message(value, headers=headers)
    assert str(caught.value) == message


def test_node_names_split_as_celery_does():
    assert (node_host('w1@web1'), node_name('w1@web1')) == ('web1', 'w1')
    assert (node_host('w1@web1@x'), node_name('w1@web1@x')) == ('web1@x', 'w1')
    assert (node_host('web1'), node_name('web1')) == ('web1', None)
    with pytest.raises(AnsibleFilterError, match="node_name: expected a node name like 'worker1@host', got NoneType"):
        node_name(None)
    assert sorted(FilterModule().filters()) == ['decode_message', 'node_host', 'node_name']
