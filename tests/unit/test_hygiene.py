# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure logic of broker hygiene (_hygiene.py): names, verdicts, thresholds, settings, RabbitMQ records."""

import base64
import json

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import OptionError
from ansible_collections.celeryops.fleet.plugins.module_utils._hygiene import (
    AMQP_KINDS, KINDS, REDIS_KINDS, amqp_findings, check_max_findings, duplicate_findings, held_fields, is_orphan,
    message_fields, no_consumer_findings, parse_eta, reply_queue_of, settings_findings, summarize, threshold_problems)


@pytest.mark.parametrize('name, queue', [
    ('5c1b.reply.celery.pidbox', '5c1b.reply.celery.pidbox'),
    ('5c1b.reply.celery.pidbox\x06\x169', '5c1b.reply.celery.pidbox'),   # a priority list of it
    ('5c1b.reply.celery.pidbox:3', '5c1b.reply.celery.pidbox'),           # another sep
    ('5c1b.reply.celery.pidboxes', None),
    ('.reply.celery.pidbox', None),
    ('_kombu.binding.reply.celery.pidbox', None),
    ('_kombu.binding_permanent.reply.celery.pidbox', None),
    ('celery.pidbox', None),
    ('worker1@host.celery.pidbox', None),
])
def test_reply_queue_of(name, queue):
    assert reply_queue_of(name) == queue


def test_orphan_verdict():
    assert is_orphan(None, bound=False, orphan_after=60)          # unbound: whatever the age
    assert is_orphan(0, bound=False, orphan_after=60)
    assert not is_orphan(None, bound=True, orphan_after=60)       # LFU: idle time unknown
    assert not is_orphan(59, bound=True, orphan_after=60)
    assert is_orphan(60, bound=True, orphan_after=60)


@pytest.mark.parametrize('eta, expected', [
    ('2030-01-01T00:00:00+00:00', 1893456000.0),
    ('2030-01-01T00:00:00Z', 1893456000.0),
    ('2030-01-01T00:00:00', 1893456000.0),             # naive: UTC
    ('2030-01-01T02:00:00+02:00', 1893456000.0),
    ('tomorrow', None), ('', None), (None, None), (12, None), ('2030-13-01T00:00:00', None),
])
def test_parse_eta(eta, expected):
    assert parse_eta(eta) == expected


def test_summary_and_thresholds():
    findings = [dict(kind='orphan_reply'), dict(kind='orphan_reply'), dict(kind='no_consumer')]
    summary = summarize(findings, REDIS_KINDS)
    assert summary['orphan_reply'] == 2 and summary['no_consumer'] == 1 and summary['overdue_unacked'] == 0
    assert set(summary) == set(REDIS_KINDS)
    assert threshold_problems(summary, None) == []
    assert threshold_problems(summary, {'orphan_reply': 2, 'no_consumer': 1}) == []
    assert threshold_problems(summary, {'orphan_reply': 1, 'no_consumer': 0, 'overdue_unacked': 0}) == [
        ('max_findings', 'findings over max_findings: no_consumer: 1 (max 0), orphan_reply: 2 (max 1)')]
    # A kind not checked on this broker counts 0.
    assert threshold_problems(summarize([], AMQP_KINDS), {'overdue_unacked': 0}) == []


@pytest.mark.parametrize('limits, text', [
    ({'nonsense': 1}, "unknown kind 'nonsense'"),
    ({'orphan_reply': -1}, 'must be 0 or more'),
    ({'orphan_reply': 'lots'}, 'must be a number of findings'),
    ({'orphan_reply': True}, 'must be a number of findings'),
])
def test_bad_max_findings(limits, text):
    with pytest.raises(OptionError) as caught:
        check_max_findings(limits)
    assert caught.value.option == 'max_findings' and text in caught.value.msg


def test_good_max_findings():
    check_max_findings(dict((kind, 0) for kind in KINDS))
    check_max_findings({'orphan_reply': '3'})   # as a templated value arrives
    check_max_findings(None)


def test_settings_findings():
    safe = {'maxmemory-policy': 'noeviction', 'maxmemory': '0', 'save': '3600 1', 'appendonly': 'no'}
    assert settings_findings(safe, {'used_memory': 10 ** 9}, 0.9) == []
    lossy = {'maxmemory-policy': 'allkeys-lru', 'maxmemory': '1000', 'save': '', 'appendonly': 'no'}
    found = settings_findings(lossy, {'used_memory': 900}, 0.9)
    assert [f['kind'] for f in found] == ['eviction_policy', 'memory_near_limit', 'persistence_off']
    assert found[1]['bytes'] == 900 and '90%' in found[1]['detail']
    assert [f['kind'] for f in settings_findings(lossy, {'used_memory': 899}, 0.9)] == ['eviction_policy',
                                                                                        'persistence_off']
    # AOF alone keeps data; settings that could not be read are no finding.
    assert settings_findings(dict(lossy, appendonly='yes', maxmemory='0'), {}, 0.9)[-1]['kind'] == 'eviction_policy'
    assert settings_findings({}, {}, 0.9) == []
    assert settings_findings({'maxmemory': 'junk', 'maxmemory-policy': 'noeviction'}, {'used_memory': 'x'}, 0.9) == []


def test_no_consumer_and_duplicates():
    found = no_consumer_findings({'a': 3, 'b': 0, 'c': 2}, consumed={'c'}, answered=['w1@h'])
    assert [(f['name'], f['count']) for f in found] == [('a', 3)] and 'w1@h' in found[0]['detail']
    found = no_consumer_findings({'a': 3}, consumed=set(), answered=[])
    assert 'no worker answered' in found[0]['detail']
    found = duplicate_findings({'x': ['ready (q)', 'unacked (q)'], 'y': ['ready (q)']})
    assert [(f['name'], f['count'], f['detail']) for f in found] == [('x', 2, 'seen in ready (q), unacked (q)')]


def _message(task_id='id-1', eta=None):
    headers = {'task': 'proj.add', 'id': task_id, 'eta': eta}
    return {'body': base64.b64encode(b'[[1, 2], {}, {}]').decode(), 'content-encoding': 'utf-8',
            'content-type': 'application/json', 'headers': headers, 'properties': {'priority': 0}}


@pytest.mark.parametrize('raw', [b'\xff\xfe', b'not json', b'[1, 2', b'{"headers": 5}', b'"text"', b'[' * 10000,
                                 json.dumps({'headers': {'task': 5, 'id': 'x'}}).encode()])
def test_junk_messages_read_as_nothing(raw):
    task_id, _task, eta = message_fields(raw)
    assert eta is None and task_id in (None, 'x')
    assert held_fields(raw) is None


def test_message_and_held_fields():
    raw = json.dumps(_message('abc', '2030-01-01T00:00:00+00:00')).encode()
    assert message_fields(raw) == ('abc', 'proj.add', '2030-01-01T00:00:00+00:00')
    held = json.dumps([_message('abc'), 'celery', 'celery']).encode()
    assert held_fields(held)[1:] == ['celery', 'celery']
    assert held_fields(json.dumps([_message('abc'), 1, 'celery']).encode()) is None
    assert held_fields(json.dumps(['m', 'celery', 'celery']).encode()) is None


def test_amqp_findings():
    queues = [
        dict(name='abc.reply.celery.pidbox', consumers=0, messages_ready=2, messages=2, durable=False, memory=10),
        dict(name='def.reply.celery.pidbox', consumers=1, messages_ready=0, messages=0, durable=False),
        dict(name='celeryev.1234', consumers=0, messages_ready=500, messages=500, durable=False, memory=99),
        dict(name='celeryev.5678', consumers=1, messages_ready=0, messages=0, durable=False),
        dict(name='w1@h.celery.pidbox', consumers=0, messages_ready=1, messages=1, durable=False),
        dict(name='tasks', consumers=0, messages_ready=7, messages=9, durable=True),
        dict(name='served', consumers=2, messages_ready=7, messages=7, durable=True),
        dict(name='volatile', consumers=1, messages_ready=0, messages=0, durable=False),
        dict(consumers=0), dict(name=None),
    ]
    nodes = [dict(name='rabbit@a', mem_alarm=True, mem_used=5, mem_limit=4, disk_free_alarm=False),
             dict(name='rabbit@b', mem_alarm=False, disk_free_alarm=True, disk_free=1, disk_free_limit=2)]
    found = [(f['kind'], f['name'], f['count']) for f in amqp_findings(queues, nodes)]
    assert found == [('orphan_reply', 'abc.reply.celery.pidbox', 2), ('stale_event_queue', 'celeryev.1234', 500),
                     ('no_consumer', 'tasks', 7), ('non_durable_queue', 'volatile', 0),
                     ('memory_alarm', 'rabbit@a', None), ('disk_alarm', 'rabbit@b', None)]


def test_consumer_timeouts_and_scheduled_eta():
    from ansible_collections.celeryops.fleet.plugins.module_utils._hygiene import consumer_timeouts, scheduled_eta_findings
    records = [dict(name='argued', arguments={'x-consumer-timeout': 60000}),
               dict(name='policed', arguments={}, effective_policy_definition={'consumer-timeout': 120000}),
               dict(name='both', arguments={'x-consumer-timeout': 10000}, effective_policy_definition={'consumer-timeout': 1}),
               dict(name='plain', arguments={}, effective_policy_definition=[]),
               dict(name='junk', arguments={'x-consumer-timeout': 'soon'}), dict(arguments={})]
    timeouts = consumer_timeouts(records, 1800.0)
    assert timeouts == {'argued': 60.0, 'policed': 120.0, 'both': 10.0, 'plain': 1800.0, 'junk': 1800.0}

    def held(task_id, queue, eta):
        return dict(eta=eta, priority=0, request=dict(id=task_id, delivery_info=dict(routing_key=queue)))
    now = parse_eta('2030-01-01T00:00:00+00:00')
    scheduled = {'w1@h': [held('a', 'argued', '2030-01-01T00:01:01+00:00'),    # 61 s > 60 s
                          held('b', 'argued', '2030-01-01T00:00:59+00:00'),
                          held('c', 'plain', '2030-01-01T01:00:00+00:00'),     # 3600 s > 1800 s
                          held('d', 'plain', 'not a date'), dict(eta=None), dict(request='junk')],
                 'w2@h': [held('e', 'plain', '2030-01-01T00:40:00+00:00')]}
    found = scheduled_eta_findings(scheduled, timeouts, 1800.0, now)
    assert [(f['name'], f['count'], f['kind']) for f in found] == [
        ('argued', 1, 'eta_beyond_visibility'), ('plain', 2, 'eta_beyond_visibility')]
    assert 'c on w1@h' in found[1]['detail'] and 'e on w2@h' in found[1]['detail'] and '(60.0s)' in found[0]['detail']


def test_module_imports_no_celery_kombu_pika():
    """As tests/unit/plugins/modules/test_imports.py checks for the other modules, in a fresh interpreter."""
    import os
    import subprocess
    import sys
    code = ("import sys; import ansible_collections.celeryops.fleet.plugins.modules.celery_broker_info; "
            "import ansible_collections.celeryops.fleet.plugins.module_utils._hygiene; "
            "print(sorted(m for m in ('celery', 'kombu', 'pika', 'ansible.module_utils.urls') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]', out.stdout + out.stderr
