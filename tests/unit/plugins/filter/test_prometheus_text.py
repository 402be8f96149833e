# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""prometheus_text (the facts of health_check and queue_report for node_exporter's textfile collector): plain dicts
shaped as celery_queue_info and celery_worker_info return them, read back with the official prometheus_client parser."""

import math

import pytest
from ansible.errors import AnsibleFilterError
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.celeryops.fleet.plugins.filter.prometheus import FAMILIES, FilterModule, prometheus_text

QUEUES = [
    {'name': 'celery', 'exists': True, 'messages': 12, 'unacked': 3, 'consumers': None, 'priorities': {'0': 10, '3': 0, '6': 2, '9': 0},
     'source': 'redis'},
    {'name': 'reports', 'exists': True, 'messages': 0, 'unacked': None, 'consumers': 2, 'priorities': None, 'source': 'amqp'},
]
WORKERS = {'workers': {'default@web1': {'ping': {'ok': 'pong'}, 'active': [{'id': 'a'}, {'id': 'b'}], 'reserved': [{'id': 'c'}],
                                        'queues': ['celery']},
                       'ping-only@web2': {'ping': {'ok': 'pong'}}},
           'missing': ['reports@web1'], 'unexpected': [], 'duplicates': []}


def parsed(text):
    """{family: {(labels as sorted tuples): value}}, and each family's type and help, as Prometheus reads them."""
    samples, types, helps = {}, {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name], helps[family.name] = family.type, family.documentation
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples, types, helps


def test_every_fact_is_a_gauge_with_help_and_labels():
    text = prometheus_text(QUEUES, workers=WORKERS, healthy=False, timestamp=1765148400.25, labels={'source': 'health_check'},
                           findings={'orphan_reply': 4, 'no_consumer': 0})
    samples, types, helps = parsed(text)
    src = ('source', 'health_check')
    assert samples['celery_queue_messages_ready'] == {(('queue', 'celery'), src): 12, (('queue', 'reports'), src): 0}
    # Unknown facts (unacked without the management API, consumers on Redis) are absent, not 0.
    assert samples['celery_queue_messages_unacked'] == {(('queue', 'celery'), src): 3}
    assert samples['celery_queue_consumers'] == {(('queue', 'reports'), src): 2}
    assert samples['celery_queue_priority_messages_ready'] == dict(
        ((('priority', step), ('queue', 'celery'), src), count) for step, count in (('0', 10), ('3', 0), ('6', 2), ('9', 0)))
    assert samples['celery_worker_up'] == {(('node', 'default@web1'), src): 1, (('node', 'ping-only@web2'), src): 1,
                                           (('node', 'reports@web1'), src): 0}
    # Active and reserved only where they were asked for and answered.
    assert samples['celery_worker_active_tasks'] == {(('node', 'default@web1'), src): 2}
    assert samples['celery_worker_reserved_tasks'] == {(('node', 'default@web1'), src): 1}
    assert samples['celery_fleet_healthy'] == {(src,): 0}
    assert samples['celery_check_timestamp_seconds'] == {(src,): 1765148400.25}
    # Every kind celery_broker_info checked, 0 included.
    assert samples['celery_broker_findings'] == {(('kind', 'no_consumer'), src): 0, (('kind', 'orphan_reply'), src): 4}
    assert set(types) == set(FAMILIES) and set(types.values()) == {'gauge'}
    assert all(helps[name] == FAMILIES[name] for name in FAMILIES)
    for line in text.splitlines():
        if not line.startswith('#'):
            assert len(line.rsplit(' ', 1)) == 2  # no sample timestamp: the textfile collector refuses them


def test_hostile_queue_and_node_names_are_escaped_and_read_back_as_they_are():
    hostile = 'we"ird\\queue\nname} 1\nfake_metric 2'
    node = 'n\\"@h\\n'
    text = prometheus_text([{'name': hostile, 'messages': 5}],
                           workers={'workers': {node: {'active': []}}, 'missing': ['gone"\n@x']},
                           labels={'source': 'a"b\\c\nd'})
    assert 'fake_metric' not in [family.name for family in text_string_to_metric_families(text)]
    samples = parsed(text)[0]
    src = ('source', 'a"b\\c\nd')
    assert samples['celery_queue_messages_ready'] == {(('queue', hostile), src): 5}
    assert samples['celery_worker_up'] == {(('node', node), src): 1, (('node', 'gone"\n@x'), src): 0}
    assert samples['celery_worker_active_tasks'] == {(('node', node), src): 0}
    assert 'queue="we\\"ird\\\\queue\\nname} 1\\nfake_metric 2"' in text
    # One line per sample: a line feed in a name never starts a line of its own.
    assert len([line for line in text.splitlines() if not line.startswith('#')]) == 4


def test_the_text_is_the_whole_file_so_what_is_gone_leaves_no_series():
    first = prometheus_text(QUEUES, workers=WORKERS)
    second = prometheus_text(QUEUES[:1], workers={'workers': {'default@web1': {}}, 'missing': []})
    assert 'reports' in first and 'reports' not in second and 'ping-only@web2' not in second
    assert 'celery_worker_active_tasks' not in second  # a family without samples is not written either
    assert prometheus_text(QUEUES, workers=WORKERS) == first  # the same facts, the same file


def test_a_queue_given_twice_is_written_once_and_nothing_gives_an_empty_file():
    text = prometheus_text([{'name': 'q', 'messages': 1}, {'name': 'q', 'messages': 9}])
    assert parsed(text)[0]['celery_queue_messages_ready'] == {(('queue', 'q'),): 1}
    assert prometheus_text([]) == ''
    assert prometheus_text(None) == ''


def test_values_are_written_as_the_format_wants():
    text = prometheus_text([{'name': 'q', 'messages': 3, 'unacked': float('nan'), 'consumers': float('inf')}],
                           healthy=True, timestamp=1765148400)
    assert 'celery_queue_messages_ready{queue="q"} 3\n' in text
    assert 'celery_queue_messages_unacked{queue="q"} NaN\n' in text and 'celery_queue_consumers{queue="q"} +Inf\n' in text
    assert 'celery_fleet_healthy 1\n' in text and 'celery_check_timestamp_seconds 1765148400\n' in text
    samples = parsed(text)[0]
    assert math.isnan(samples['celery_queue_messages_unacked'][(('queue', 'q'),)])
    assert text.endswith('\n')


def test_no_broker_password_can_reach_the_text():
    # celery_worker_info's broker facts and anything else in the result are not read: only the names in the docs.
    workers = dict(WORKERS, broker={'transport': 'redis', 'host': 'h', 'user': 'u', 'url': 'redis://u:s3cret@h'})
    queues = [dict(QUEUES[0], broker_url='redis://u:s3cret@h')]
    assert 's3cret' not in prometheus_text(queues, workers=workers)


@pytest.mark.parametrize('args, kwargs, message', [
    ('celery', {}, 'prometheus_text: queues must be a list, got str'),
    (['celery'], {}, 'prometheus_text: queues[0] must be a dict, got str'),
    ([{'messages': 1}], {}, 'prometheus_text: queues[0].name must be a non-empty string, got NoneType'),
    ([{'name': '', 'messages': 1}], {}, "prometheus_text: queues[0].name must be a non-empty string, got ''"),
    ([{'name': 'q', 'messages': '12'}], {}, 'prometheus_text: queues[0].messages must be a number, got str'),
    ([{'name': 'q', 'messages': 1, 'priorities': {'0': 'x'}}], {}, "prometheus_text: queues[0].priorities['0'] must be a number, got str"),
    ([{'name': 'q', 'messages': 1, 'priorities': [1]}], {}, 'prometheus_text: queues[0].priorities must be a dict, got list'),
    ([], {'workers': []}, 'prometheus_text: workers (the result of celery_worker_info) must be a dict, got list'),
    ([], {'workers': {'workers': {'n@h': {'active': 3}}}}, "prometheus_text: workers.workers['n@h'].active must be a list, got int"),
    ([], {'workers': {'missing': [None]}}, 'prometheus_text: workers.missing[0] must be a non-empty string, got NoneType'),
    ([], {'healthy': 'yes'}, 'prometheus_text: healthy must be a boolean, got str'),
    ([], {'timestamp': 'now'}, 'prometheus_text: timestamp must be a number, got str'),
    ([], {'timestamp': float('nan')}, 'prometheus_text: timestamp must be seconds since the epoch, got nan'),
    ([], {'labels': {'9x': 'a'}}, "prometheus_text: labels: '9x' is not a label name (letters, digits and _, not starting with a digit or __)"),
    ([], {'labels': {'__name__': 'a'}}, "prometheus_text: labels: '__name__' is not a label name (letters, digits and _, not starting with a digit or __)"),
    ([], {'labels': {'a-b': 'a'}}, "prometheus_text: labels: 'a-b' is not a label name (letters, digits and _, not starting with a digit or __)"),
    ([], {'labels': {'queue': 'a'}}, "prometheus_text: labels: 'queue' is a label the metrics set themselves"),
    ([], {'labels': {'source': None}}, "prometheus_text: labels['source'] must be a string, got NoneType"),
    ([], {'labels': ['source']}, 'prometheus_text: labels must be a dict, got list'),
])
def test_what_is_not_shaped_as_the_modules_return_it_is_named(args, kwargs, message):
    with pytest.raises(AnsibleFilterError) as caught:
        prometheus_text(args, **kwargs)
    assert str(caught.value) == message


def test_the_filter_is_registered():
    assert FilterModule().filters() == {'prometheus_text': prometheus_text}


def test_findings_must_be_counts_per_kind():
    with pytest.raises(AnsibleFilterError, match=r"findings\['orphan_reply'\]"):
        prometheus_text([], findings={'orphan_reply': 'many'})
    with pytest.raises(AnsibleFilterError, match='findings must be'):
        prometheus_text([], findings=['orphan_reply'])
    with pytest.raises(AnsibleFilterError, match="'kind' is a label the metrics set themselves"):
        prometheus_text([], labels={'kind': 'x'})
