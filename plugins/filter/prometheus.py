# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The facts of the fleet playbooks in the Prometheus text exposition format, for node_exporter's textfile
collector (docs in prometheus_text.yml beside). The one place the format is written."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError

from ansible_collections.celeryops.fleet.plugins.module_utils._messages import kind

# Label names as the format allows them; a leading __ is reserved for Prometheus itself.
_LABEL_NAME = re.compile(r'^[a-zA-Z_][a-zA-Z0-9_]*$')
# The labels the metrics set themselves: a constant label of the same name would make two labels of one name.
_OWN_LABELS = ('queue', 'priority', 'node', 'kind')

# Every metric family: name -> help text. Its TYPE is gauge: each is a value read at the time of the check.
FAMILIES = {
    'celery_queue_messages_ready': 'Ready messages in the Celery queue, over every priority step.',
    'celery_queue_messages_unacked': 'Messages of the Celery queue delivered to workers and not yet acknowledged.',
    'celery_queue_consumers': 'Consumers of the Celery queue (RabbitMQ; Redis cannot count them).',
    'celery_queue_priority_messages_ready': 'Ready messages of the Celery queue on one priority step (Redis).',
    'celery_worker_up': 'Whether the Celery worker node answered (1) or not (0).',
    'celery_worker_active_tasks': 'Tasks the Celery worker node was running.',
    'celery_worker_reserved_tasks': 'Tasks the Celery worker node had prefetched and not yet started.',
    'celery_broker_findings': 'Findings of celeryops.fleet.celery_broker_info of one kind (0: checked, none found).',
    'celery_fleet_healthy': 'Whether the health check found the Celery fleet healthy (1) or not (0).',
    'celery_check_timestamp_seconds': 'Unix time at which the facts were gathered.',
}


def _is_list(value):
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(text):
    raise AnsibleFilterError('prometheus_text: ' + text)


def _mapping(value, what):
    if not isinstance(value, Mapping):
        _fail('%s must be a dict, got %s' % (what, kind(value)))
    return value


def _list(value, what):
    if value is None:
        return []
    if not _is_list(value):
        _fail('%s must be a list, got %s' % (what, kind(value)))
    return list(value)


def _name(value, what):
    if not isinstance(value, str) or value == '':
        _fail('%s must be a non-empty string, got %s' % (what, "''" if value == '' else kind(value)))
    return value


def _number(value, what):
    """A sample value, or None when the fact is unknown (no series then: an absent series, not a made-up 0)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if not _is_number(value):
        _fail('%s must be a number, got %s' % (what, kind(value)))
    return value


def escape_label_value(value):
    """A label value as the format quotes it: backslash, double quote and line feed escaped, nothing else."""
    return value.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


def format_value(value):
    """A sample value as the format writes it (Go's ParseFloat reads it back)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return 'NaN'
    if math.isinf(value):
        return '+Inf' if value > 0 else '-Inf'
    return repr(float(value))


def _labels(labels):
    """The constant labels, checked: name -> str value."""
    labels = _mapping(labels or {}, 'labels')
    out = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name) or name.startswith('__'):
            _fail('labels: %r is not a label name (letters, digits and _, not starting with a digit or __)' % (name,))
        if name in _OWN_LABELS:
            _fail('labels: %r is a label the metrics set themselves' % name)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            _fail('labels[%r] must be a string, got %s' % (name, kind(value)))
        out[name] = str(value)
    return out


class _Samples(object):
    """The samples of each family, in the order added; one series per label set (the first one wins)."""

    def __init__(self, constant):
        self.constant = constant
        self.families = {}

    def add(self, family, value, **labels):
        if value is None:
            return
        labels = dict(self.constant, **labels)
        key = tuple(sorted(labels.items()))
        series = self.families.setdefault(family, {})
        series.setdefault(key, (labels, value))

    def text(self):
        lines = []
        for family in FAMILIES:  # a fixed order: two runs over the same facts give the same file
            if family not in self.families:
                continue
            lines.append('# HELP %s %s' % (family, FAMILIES[family].replace('\\', '\\\\').replace('\n', '\\n')))
            lines.append('# TYPE %s gauge' % family)
            for labels, value in self.families[family].values():
                shown = ','.join('%s="%s"' % (name, escape_label_value(labels[name])) for name in sorted(labels))
                lines.append('%s%s %s' % (family, '{%s}' % shown if shown else '', format_value(value)))
        return '\n'.join(lines) + '\n' if lines else ''


def _queue_samples(samples, queues):
    """celery_queue_info's queues: ready, unacked and consumers per queue, ready per priority step."""
    for index, queue in enumerate(_list(queues, 'queues')):
        what = 'queues[%d]' % index
        queue = _mapping(queue, what)
        name = _name(queue.get('name'), what + '.name')
        samples.add('celery_queue_messages_ready', _number(queue.get('messages'), what + '.messages'), queue=name)
        samples.add('celery_queue_messages_unacked', _number(queue.get('unacked'), what + '.unacked'), queue=name)
        samples.add('celery_queue_consumers', _number(queue.get('consumers'), what + '.consumers'), queue=name)
        priorities = _mapping(queue.get('priorities') or {}, what + '.priorities')
        for step in sorted(priorities, key=lambda step: (len(str(step)), str(step))):  # 0, 3, 6, 9 in number order
            samples.add('celery_queue_priority_messages_ready',
                        _number(priorities[step], '%s.priorities[%r]' % (what, step)), queue=name, priority=str(step))


def _worker_samples(samples, workers):
    """celery_worker_info's result: up 1 for each node that answered (active and reserved when asked for), up 0
    for each expected node that did not."""
    workers = _mapping(workers, 'workers (the result of celery_worker_info)')
    answered = _mapping(workers.get('workers') or {}, 'workers.workers')
    for node in sorted(answered):
        _name(node, 'a node name of workers.workers')
        reply = _mapping(answered[node] or {}, 'workers.workers[%r]' % node)
        samples.add('celery_worker_up', 1, node=node)
        for section, family in (('active', 'celery_worker_active_tasks'), ('reserved', 'celery_worker_reserved_tasks')):
            if section in reply:
                samples.add(family, len(_list(reply[section], 'workers.workers[%r].%s' % (node, section))), node=node)
    for index, node in enumerate(_list(workers.get('missing'), 'workers.missing')):
        samples.add('celery_worker_up', 0, node=_name(node, 'workers.missing[%d]' % index))


def _finding_samples(samples, findings):
    """celery_broker_info's summary: a count per kind checked."""
    for name, count in _mapping(findings, 'findings').items():
        samples.add('celery_broker_findings', _number(count, 'findings[%r]' % (name,)), kind=_name(name, 'findings key'))


def prometheus_text(queues, workers=None, healthy=None, timestamp=None, labels=None, findings=None):
    """The facts given as a Prometheus text file: HELP and TYPE lines, then one line per series. Pure: the modules
    have asked the broker already. A fact not given (None) writes no series."""
    samples = _Samples(_labels(labels))
    _queue_samples(samples, queues)
    if workers is not None:
        _worker_samples(samples, workers)
    if findings is not None:
        _finding_samples(samples, findings)
    if healthy is not None:
        if not isinstance(healthy, bool):
            _fail('healthy must be a boolean, got %s' % kind(healthy))
        samples.add('celery_fleet_healthy', int(healthy))
    if timestamp is not None:
        timestamp = _number(timestamp, 'timestamp')
        if not math.isfinite(timestamp) or timestamp < 0:
            _fail('timestamp must be seconds since the epoch, got %r' % timestamp)
        samples.add('celery_check_timestamp_seconds', timestamp)
    return samples.text()


class FilterModule(object):

    def filters(self):
        return {'prometheus_text': prometheus_text}
