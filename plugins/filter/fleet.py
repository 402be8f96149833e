# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters about the fleet: the node names of a host's workers, and the health check's judgement of the fleet
(docs in the .yml files beside)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError

from ansible_collections.celeryops.fleet.plugins.module_utils._messages import kind


def _is_list(value):
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


# The columns of the summary table, in order; a row of fleet_health has one key per column.
COLUMNS = ('host', 'node', 'status', 'queues', 'active', 'depth')


def _mapping(value, what):
    if not isinstance(value, Mapping):
        raise AnsibleFilterError('fleet_health: %s must be a dict, got %s' % (what, kind(value)))
    return value


def _list(value, what):
    if value is None:
        return []
    if not _is_list(value):
        raise AnsibleFilterError('fleet_health: %s must be a list, got %s' % (what, kind(value)))
    return list(value)


def _limit(value, what, unit='messages'):
    """A threshold as given (None or '' for none) and as the number compared with; a string is read as an
    integer, since -e on the command line gives strings."""
    if value is None or value == '':
        return None
    if _is_number(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise AnsibleFilterError('fleet_health: %s must be a whole number of %s, got %s'
                             % (what, unit, repr(value) if isinstance(value, str) else kind(value)))


def _queue(queue, index, what='queues'):
    """An entry of celery_queue_info's queues: a name and a number of ready messages at least."""
    _mapping(queue, '%s[%d]' % (what, index))
    if not _text(queue.get('name')):
        raise AnsibleFilterError('fleet_health: %s[%d].name must be a non-empty string, got %s' % (what, index, _shown(queue.get('name'))))
    if not _is_number(queue.get('messages')):
        raise AnsibleFilterError('fleet_health: %s[%d].messages must be a number, got %s' % (what, index, kind(queue.get('messages'))))
    return queue


def _depth(queues, depths):
    """Ready messages in these queues, as far as they were read."""
    return sum(depths.get(name, 0) for name in queues)


def _node_rows(expected, answered, failed_on, depths):
    """One row per expected node: answering, consuming what it should, under a name of its own, no failed tasks."""
    rows = []
    for index, entry in enumerate(expected):
        entry = _mapping(entry, 'expected[%d]' % index)
        node = entry.get('node')
        if not _text(node):
            raise AnsibleFilterError('fleet_health: expected[%d].node must be a non-empty string, got %s' % (index, _shown(node)))
        should_consume = _list(entry.get('queues'), 'expected[%d].queues' % index)
        reply = _mapping(answered['workers'].get(node) or {}, 'workers.workers[%r]' % node)
        consumes = _list(reply.get('queues'), 'workers.workers[%r].queues' % node)
        status = []
        if node in answered['missing']:
            status.append('not answering')
        else:
            idle = [queue for queue in should_consume if queue not in consumes]
            if idle:
                status.append('not consuming ' + ','.join(idle))
        if node in answered['duplicates']:
            status.append('name used by several workers')
        if node in failed_on:
            status.append('%d failed task(s)' % failed_on.count(node))
        rows.append({'host': entry.get('host'), 'node': node, 'ok': not status, 'status': '; '.join(status) or 'ok',
                     'queues': ','.join(consumes) if 'queues' in reply else '-',
                     'active': len(_list(reply['active'], 'workers.workers[%r].active' % node)) if 'active' in reply else '-',
                     'depth': _depth(should_consume or consumes, depths)})
    return rows


def _unexpected_rows(answered, fail_on_unexpected, depths):
    """One row per node that answered without being expected: a problem only with fail_on_unexpected."""
    rows = []
    for node in answered['unexpected']:
        reply = _mapping(answered['workers'].get(node) or {}, 'workers.workers[%r]' % node)
        consumes = _list(reply.get('queues'), 'workers.workers[%r].queues' % node)
        rows.append({'host': '-', 'node': node, 'ok': not fail_on_unexpected, 'status': 'unexpected',
                     'queues': ','.join(consumes), 'active': len(_list(reply.get('active'), 'workers.workers[%r].active' % node)),
                     'depth': _depth(consumes, depths)})
    return rows


def _queue_rows(queues, max_messages, queue_max_messages):
    """One row per queue read: no more ready messages than its threshold (its own, or max_messages)."""
    rows = []
    for queue in queues:
        name = queue.get('name')
        if name in queue_max_messages:
            limit, what = queue_max_messages[name], 'queue_max_messages[%r]' % name
        else:
            limit, what = max_messages, 'max_messages'
        number = _limit(limit, what)
        over = number is not None and queue['messages'] > number
        rows.append({'name': name, 'messages': queue['messages'], 'unacked': queue.get('unacked'), 'limit': limit,
                     'ok': not over, 'status': '%d ready messages, more than %s' % (queue['messages'], limit) if over else 'ok'})
    return rows


def _finding_rows(findings, max_findings):
    """One row per kind celery_broker_info checked (its ``summary``): how many were found, and whether more than
    max_findings[kind] (a kind without a limit is reported, never judged)."""
    if findings is None:
        return []
    findings = _mapping(findings, 'findings (the summary of celery_broker_info)')
    limits = _mapping(max_findings or {}, 'max_findings')
    unknown = sorted(str(name) for name in limits if name not in findings)
    if unknown:
        # A misspelt kind would never fire: say so, with the kinds there are.
        raise AnsibleFilterError('fleet_health: max_findings names kinds celery_broker_info did not check on this '
                                 'broker: %s (checked: %s)' % (', '.join(unknown), ', '.join(sorted(findings))))
    rows = []
    for name in sorted(findings):
        count = _limit(findings[name], 'findings[%r]' % name, 'findings')
        limit = _limit(limits.get(name), 'max_findings[%r]' % name, 'findings')
        over = count is not None and limit is not None and count > limit
        rows.append({'kind': name, 'count': count, 'limit': limits.get(name), 'ok': not over,
                     'status': '%d found, more than %s' % (count, limit) if over else 'ok'})
    return rows


# A task's time_start before this (2001) is no wall-clock time: Celery before 5.3 sent the worker's monotonic clock.
_EPOCH_PLAUSIBLE = 1e9


def _seconds_limit(value, what):
    """A number of seconds as given (None or '' for none): a number or a numeric string (-e gives strings), over 0."""
    if value is None or value == '':
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if not _is_number(number) or not math.isfinite(number) or number <= 0:
        if isinstance(value, str):
            shown = repr(value)
        else:
            shown = value if _is_number(value) else kind(value)
        raise AnsibleFilterError('fleet_health: %s must be a number of seconds over 0, got %s' % (what, shown))
    return number


def _long_task_rows(expected, answered, max_task_runtime, now):
    """One row per active task that has run longer than max_task_runtime seconds at ``now`` (epoch seconds), on any
    node that answered. A task without a wall-clock time_start cannot be judged and is left out."""
    limit = _seconds_limit(max_task_runtime, 'max_task_runtime')
    if limit is None:
        return []
    if not _is_number(now):
        raise AnsibleFilterError('fleet_health: now (epoch seconds) must be a number with max_task_runtime, got %s' % kind(now))
    hosts = dict((entry.get('node'), entry.get('host')) for entry in expected if isinstance(entry, Mapping))
    rows = []
    for node in sorted(answered['workers']):
        reply = _mapping(answered['workers'][node] or {}, 'workers.workers[%r]' % node)
        for index, task in enumerate(_list(reply.get('active'), 'workers.workers[%r].active' % node)):
            task = _mapping(task, 'workers.workers[%r].active[%d]' % (node, index))
            started = task.get('time_start')
            if not _is_number(started) or started < _EPOCH_PLAUSIBLE:
                continue
            runtime = round(now - started, 1)
            if runtime > limit:
                rows.append({'host': hosts.get(node, '-'), 'node': node, 'name': task.get('name'), 'id': task.get('id'),
                             'runtime': runtime, 'limit': max_task_runtime, 'ok': False,
                             'status': 'task %s[%s] running for %s s, more than %s s' % (
                                 task.get('name'), task.get('id'), runtime, max_task_runtime)})
    return rows


def _consumer_state(workers, node):
    """A node's reply as {queues, active, reserved, processes}, or None when it cannot be judged: not answered, or
    active, reserved or active_queues not asked for. processes is the pool's max-concurrency (stats), or None."""
    if node not in workers:
        return None
    reply = _mapping(workers[node] or {}, 'workers.workers[%r]' % node)
    if not all(key in reply for key in ('queues', 'active', 'reserved')):
        return None
    stats = reply.get('stats')
    pool = stats.get('pool') if isinstance(stats, Mapping) else None
    processes = pool.get('max-concurrency') if isinstance(pool, Mapping) else None
    return {'queues': _list(reply.get('queues'), 'workers.workers[%r].queues' % node),
            'active': len(_list(reply.get('active'), 'workers.workers[%r].active' % node)),
            'reserved': len(_list(reply.get('reserved'), 'workers.workers[%r].reserved' % node)),
            'processes': processes if _is_number(processes) else None}


def _stalled_queues(state, depths):
    """The queues a node lists with ready messages while it is idle (nothing active or reserved)."""
    if state['active'] or state['reserved']:
        return []
    return [name for name in state['queues'] if depths.get(name, 0) > 0]


def _starvation(states, node):
    """Why tasks reserved on ``node`` wait while processes are idle, or None: they wait behind a running task while its
    own pool has idle processes (active below max-concurrency), or its pool is busy while another node consuming one
    of its queues is idle. Nothing active is a task just received, about to start: not judged."""
    state = states[node]
    if not state['reserved'] or not state['active'] or state['processes'] is None:
        return None
    if state['active'] < state['processes']:
        return '%d task(s) reserved while only %d of its %d processes are busy' % (
            state['reserved'], state['active'], state['processes'])
    idle = [other for other in sorted(states) if other != node and states[other]['processes'] is not None
            and not states[other]['reserved'] and states[other]['active'] < states[other]['processes']
            and set(states[other]['queues']) & set(state['queues'])]
    if not idle:
        return None
    return '%d task(s) reserved behind its %d busy process(es) while %s, consuming the same queue, has idle processes' % (
        state['reserved'], state['processes'], ', '.join(idle))


def _stall_rows(expected, answered, depths, end, stall_window):
    """Stalled consumers: a row per (node, queue) where an answering node lists the queue in active_queues, the queue
    has ready messages and the node is idle (kind stalled); a row per node whose reserved tasks wait while processes
    are idle (kind prefetch_starvation, needs stats). With a window (``end``: the workers and queue depths asked
    again at its end), a row only when the same holds at both samples."""
    hosts = dict((entry.get('node'), entry.get('host')) for entry in expected if isinstance(entry, Mapping))
    states = {}
    for node in answered['workers']:
        state = _consumer_state(answered['workers'], node)
        if state is not None:
            states[node] = state
    later = {}
    if end is not None:
        for node in end['workers']:
            state = _consumer_state(end['workers'], node)
            if state is not None:
                later[node] = state
    rows = []
    for node in sorted(states):
        stalled = _stalled_queues(states[node], depths)
        starved = _starvation(states, node)
        if end is not None:
            # Gone or silent at the window's end: the node rows judge that, not the stall check.
            stalled = [name for name in stalled if node in later and name in _stalled_queues(later[node], end['depths'])]
            starved = starved if node in later and _starvation(later, node) else None
        for name in stalled:
            if end is None:
                how = '%d ready messages' % depths[name]
            else:
                how = '%d ready messages at the start of a %s s window and %d at its end' % (depths[name], stall_window, end['depths'][name])
            rows.append({'host': hosts.get(node, '-'), 'node': node, 'queue': name, 'kind': 'stalled', 'ok': False,
                         'status': 'queue %s stalled: %s, and %s lists it in active_queues but is idle (nothing active or '
                                   'reserved)' % (name, how, node)})
        if starved:
            rows.append({'host': hosts.get(node, '-'), 'node': node, 'queue': ','.join(states[node]['queues']),
                         'kind': 'prefetch_starvation', 'ok': False,
                         'status': 'prefetch starvation: %s%s' % (starved, '' if end is None else ' (at both ends of a %s s window)'
                                                                  % stall_window)})
    return rows


def _events_row(events, failures, events_window):
    """The event window, when there was one: no task failed while it listened."""
    if events is None:
        return None
    total = events.get('failures_total') or 0
    if not total:
        return {'failures': total, 'ok': True, 'status': 'ok'}
    seen = []
    for failure in failures:
        where = '%s on %s' % (failure.get('name'), failure.get('hostname'))
        if where not in seen:
            seen.append(where)
    status = '%d task(s) failed in the last %s s: %s' % (total, events_window, ', '.join(seen))
    return {'failures': total, 'ok': False, 'status': status}


def _table(rows, queue_rows, task_rows, problems, stall_rows=(), finding_rows=()):
    """The summary as lines: the node table with aligned columns, one line per queue, one per task running too long,
    one per stalled consumer or prefetch starvation, one per kind of broker finding found or over its limit, one per
    problem."""
    header = dict((column, column.upper()) for column in COLUMNS)
    widths = [max(len(str(row[column])) for row in [header] + rows) for column in COLUMNS]
    lines = ['  '.join('%-*s' % (width, row[column]) for column, width in zip(COLUMNS, widths)).strip()
             for row in [header] + rows]
    for queue in queue_rows:
        unacked = '?' if queue['unacked'] is None else queue['unacked']
        lines.append('queue %s: %d ready, %s unacked%s' % (
            queue['name'], queue['messages'], unacked, '' if queue['ok'] else ' - ' + queue['status']))
    lines.extend('task %s[%s] on %s: running for %s s, more than %s s' % (
        task['name'], task['id'], task['node'], task['runtime'], task['limit']) for task in task_rows)
    lines.extend('%s on %s: %s' % (stall['kind'], stall['node'], stall['status']) for stall in stall_rows)
    lines.extend('broker %s: %d found%s' % (row['kind'], row['count'], '' if row['ok'] else ' - ' + row['status'])
                 for row in finding_rows if row['count'] or not row['ok'])
    lines.extend('UNHEALTHY ' + problem for problem in problems)
    return lines


def fleet_health(expected, workers, queues=None, events=None, max_messages=None, queue_max_messages=None,
                 fail_on_unexpected=False, events_window=10, max_task_runtime=None, now=None, workers_end=None,
                 queues_end=None, stall_window=None, findings=None, max_findings=None):
    """The health check's judgement of the fleet: a row per node (expected, then unexpected), per queue, per task
    running longer than max_task_runtime (at ``now``, epoch seconds), per stalled consumer or prefetch starvation
    (confirmed at the end of a window by ``workers_end`` and ``queues_end`` when given), per kind of broker finding
    (``findings``: celery_broker_info's summary, judged by ``max_findings``) and for the event window, the problems in
    words, and the summary table. Pure: the modules have asked the broker already."""
    expected = _list(expected, 'expected (the expected nodes)')
    workers = _mapping(workers, 'workers (the result of celery_worker_info)')
    answered = {'workers': _mapping(workers.get('workers') or {}, 'workers.workers')}
    for key in ('missing', 'duplicates', 'unexpected'):
        answered[key] = _list(workers.get(key), 'workers.' + key)
    queues = _list(queues, 'queues')
    queue_max_messages = _mapping(queue_max_messages or {}, 'queue_max_messages')
    if not isinstance(fail_on_unexpected, bool):
        raise AnsibleFilterError('fleet_health: fail_on_unexpected must be a boolean, got %s' % kind(fail_on_unexpected))
    if events is not None:
        events = _mapping(events, 'events (the result of celery_events_info)')
    failures = _list(events.get('failures'), 'events.failures') if events else []
    failed_on = [_mapping(failure, 'events.failures[%d]' % index).get('hostname') for index, failure in enumerate(failures)]

    queues = [_queue(queue, index) for index, queue in enumerate(queues)]
    depths = dict((queue['name'], queue['messages']) for queue in queues)
    rows = _node_rows(expected, answered, failed_on, depths) + _unexpected_rows(answered, fail_on_unexpected, depths)
    queue_rows = _queue_rows(queues, max_messages, queue_max_messages)
    event_row = _events_row(events, failures, events_window)
    task_rows = _long_task_rows(expected, answered, max_task_runtime, now)
    end = None
    if workers_end is not None:
        _seconds_limit(stall_window, 'stall_window')
        workers_end = _mapping(workers_end, 'workers_end (celery_worker_info at the end of the window)')
        ends = [_queue(queue, index, 'queues_end') for index, queue in enumerate(_list(queues_end, 'queues_end'))]
        end = {'workers': _mapping(workers_end.get('workers') or {}, 'workers_end.workers'),
               'depths': dict((queue['name'], queue['messages']) for queue in ends)}
    stall_rows = _stall_rows(expected, answered, depths, end, stall_window)
    finding_rows = _finding_rows(findings, max_findings)

    problems = ['%s (host %s): %s' % (row['node'], row['host'], row['status']) for row in rows if not row['ok']]
    problems += ['queue %s: %s' % (row['name'], row['status']) for row in queue_rows if not row['ok']]
    problems += ['%s (host %s): %s' % (row['node'], row['host'], row['status']) for row in task_rows + stall_rows]
    problems += ['broker %s: %s' % (row['kind'], row['status']) for row in finding_rows if not row['ok']]
    if event_row and not event_row['ok']:
        problems.append(event_row['status'])
    return {'healthy': not problems, 'rows': rows, 'queues': queue_rows, 'tasks': task_rows, 'stalled': stall_rows,
            'findings': finding_rows, 'events': event_row, 'problems': problems,
            'table': _table(rows, queue_rows, task_rows, problems, stall_rows, finding_rows)}


class FilterModule(object):

    def filters(self):
        return {'fleet_health': fleet_health, 'worker_nodes': worker_nodes}
