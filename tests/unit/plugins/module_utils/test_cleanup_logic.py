# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure logic of celery_broker: where a restored message goes, how it is marked, what the diff says, which
options are refused."""

import json

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import OptionError
from ansible_collections.celeryops.fleet.plugins.module_utils._hygiene import (
    check_cleanup_params, cleanup_argument_spec, cleanup_diff, reported_ids)
from ansible_collections.celeryops.fleet.plugins.module_utils._redis_queues import priority_step, restore_payload


@pytest.mark.parametrize('priority, steps, step', [
    (None, [0, 3, 6, 9], 0),
    (0, [0, 3, 6, 9], 0),
    (2, [0, 3, 6, 9], 0),
    (3, [0, 3, 6, 9], 3),
    (5, [0, 3, 6, 9], 3),
    (9, [0, 3, 6, 9], 9),
    (200, [0, 3, 6, 9], 9),     # kombu bounds it to 9
    (-4, [0, 3, 6, 9], 0),
    ('7', [0, 3, 6, 9], 6),     # int() of a string, as kombu
    ('high', [0, 3, 6, 9], 0),  # not a number: kombu's default 0
    (1e300, [0, 3, 6, 9], 9),
    (float('inf'), [0, 3, 6, 9], 0),   # int() refuses it: the default
    (5, [0], 0),
    (5, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 5),
])
def test_priority_step(priority, steps, step):
    message = {'properties': {}} if priority is None else {'properties': {'priority': priority}}
    assert priority_step(message, steps) == step


def test_priority_step_without_properties():
    assert priority_step({}, [0, 3]) == 0
    assert priority_step({'properties': None}, [0, 3]) == 0


def test_restore_payload_marks_redelivered():
    message = {'body': 'e30=', 'headers': {'id': 'x', 'task': 't'},
               'properties': {'delivery_info': {'exchange': '', 'routing_key': 'q'}, 'priority': 0}}
    out = restore_payload(json.dumps([message, '', 'q']))
    assert out['headers']['redelivered'] is True and out['properties']['delivery_info']['redelivered'] is True
    assert out['body'] == 'e30=' and out['headers']['id'] == 'x'


@pytest.mark.parametrize('value', [
    b'not json', b'{"a": 1}', b'[1, 2, 3]', b'[{"headers": 1}, "", "q", 4]', b'["m", "", "q"]', None, b'[' * 5000,
])
def test_restore_payload_refuses_what_is_not_an_entry(value):
    assert restore_payload(value) is None


def test_restore_payload_without_headers_or_delivery_info():
    out = restore_payload(json.dumps([{'headers': 'junk', 'properties': {'delivery_info': None}}, '', 'q']))
    assert out == {'headers': 'junk', 'properties': {'delivery_info': None}}


def test_cleanup_diff():
    findings = [dict(kind='orphan_reply', name='a.reply.celery.pidbox'), dict(kind='orphan_reply', name='b.reply.celery.pidbox'),
                dict(kind='stale_event_queue', name='celeryev.1'), dict(kind='overdue_unacked', name='q')]
    cleaned = [dict(kind='orphan_reply', name='a.reply.celery.pidbox'), dict(kind='stale_event_queue', name='celeryev.1')]
    assert cleanup_diff(findings, cleaned) == dict(
        before={'orphan_reply': ['a.reply.celery.pidbox', 'b.reply.celery.pidbox'], 'stale_event_queue': ['celeryev.1']},
        after={'orphan_reply': ['b.reply.celery.pidbox']})


def params(**given):
    out = dict((name, option.get('default')) for name, option in cleanup_argument_spec().items())
    out.update(given)
    return out


@pytest.mark.parametrize('given, option, text', [
    (dict(), 'kinds', 'nothing to do'),
    (dict(kinds=['orphan_reply'], orphan_after=0.0), 'orphan_after', 'positive'),
    (dict(kinds=['orphan_reply'], timeout=float('nan')), 'timeout', 'positive'),
    (dict(restore_overdue=True, visibility_timeout=-1.0), 'visibility_timeout', 'positive'),
    (dict(restore_overdue=True, expected_count=-1), 'expected_count', '0 or more'),
    (dict(restore_overdue=True, expected_nodes=[]), 'expected_nodes', 'empty'),
])
def test_check_cleanup_params(given, option, text):
    with pytest.raises(OptionError) as caught:
        check_cleanup_params(params(**given))
    assert caught.value.option == option and text in caught.value.msg


def test_check_cleanup_params_accepts():
    check_cleanup_params(params(kinds=['orphan_reply']))
    check_cleanup_params(params(restore_overdue=True))


def test_cleanup_kinds_are_the_deletable_ones():
    assert cleanup_argument_spec()['kinds']['choices'] == ['orphan_reply', 'stale_event_queue']


class FakeReplies(object):
    def __init__(self, by_command):
        self.by_command = by_command

    def first(self, command):
        return self.by_command.get(command, {})


def test_reported_ids():
    replies = FakeReplies({'active': {'w1@h': [{'id': 'a'}]}, 'reserved': {'w2@h': [{'id': 'b'}, {}]},
                           'scheduled': {'w1@h': [{'request': {'id': 'c'}}, {'request': 'junk'}, {}]}})
    assert reported_ids(replies) - {None} == {'a', 'b', 'c'}
