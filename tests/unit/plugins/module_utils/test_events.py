# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The event window's summary: counting, names through uuids, failures, workers gone, and the hints."""

from ansible_collections.celeryops.fleet.plugins.module_utils._events import (
    EventSummary, percentile, routing_key, traceback_line)

TRACEBACK = '''Traceback (most recent call last):
  File "/venv/celery/app/trace.py", line 453, in trace_task
    R = retval = fun(*args, **kwargs)
  File "/srv/proj/tasks.py", line 12, in charge
    raise CardDeclined(card)
proj.tasks.CardDeclined: 4242
'''


def heartbeat(host, processed=0, active=0, freq=2.0, timestamp=100.0):
    return dict(type='worker-heartbeat', hostname=host, freq=freq, active=active, processed=processed,
                loadavg=[0.1, 0.2, 0.3], sw_ver='5.4.0', timestamp=timestamp)


def task(kind, uuid, host='w1@web1', **fields):
    return dict(type='task-' + kind, uuid=uuid, hostname=host, **fields)


def test_counts_per_type_and_per_task_named_through_uuids():
    summary = EventSummary()
    events = [task('received', 'a', name='proj.add'), task('started', 'a'), task('succeeded', 'a', runtime=0.5),
              task('received', 'b', name='proj.add'), task('succeeded', 'b', runtime=0.1),
              task('failed', 'c', exception="KeyError('x')", traceback=TRACEBACK, timestamp=5.0),
              task('retried', 'd'), heartbeat('w1@web1')]
    for event in events:
        assert summary.add(event, 10.0)
    out = summary.result(now=11.0)
    assert out['counts'] == {'task-received': 2, 'task-started': 1, 'task-succeeded': 2, 'task-failed': 1,
                             'task-retried': 1, 'worker-heartbeat': 1}
    assert out['events'] == 8
    add = out['tasks']['proj.add']
    assert (add['received'], add['started'], add['succeeded'], add['failed']) == (2, 1, 2, 0)
    assert add['runtime'] == dict(min=0.1, p50=0.1, p95=0.5, max=0.5)
    # Received before the window: no name to go by.
    assert out['tasks']['<unknown>']['failed'] == 1 and out['tasks']['<unknown>']['retried'] == 1
    assert out['failures'] == [dict(uuid='c', name='<unknown>', exception="KeyError('x')",
                                    traceback='File "/srv/proj/tasks.py", line 12, in charge',
                                    hostname='w1@web1', timestamp=5.0)]
    assert out['hint'] is None


def test_types_filter_counts_only_those_but_still_reads_workers():
    summary = EventSummary(types=['task-failed'])
    assert not summary.add(task('received', 'a', name='proj.add'), 1.0)
    assert not summary.add(heartbeat('w1@web1'), 1.0)
    assert summary.add(task('failed', 'a', exception='E()'), 1.0)
    out = summary.result(now=2.0)
    assert out['counts'] == {'task-failed': 1} and out['events'] == 1
    assert out['tasks']['proj.add']['failed'] == 1
    assert out['workers']['w1@web1']['task_events'] is True


def test_failures_newest_first_and_capped():
    summary = EventSummary(max_failures=2)
    for n in range(5):
        summary.add(task('failed', str(n), timestamp=float(n)), 1.0)
    out = summary.result(now=1.0)
    assert [f['uuid'] for f in out['failures']] == ['4', '3'] and out['failures_total'] == 5
    assert EventSummary(max_failures=0).result(now=0.0)['failures'] == []


def test_workers_online_offline_and_gone_silent():
    summary = EventSummary()
    summary.add(heartbeat('up@a', freq=2.0), 10.0)
    summary.add(heartbeat('bye@b'), 10.0)
    summary.add(dict(type='worker-offline', hostname='bye@b', timestamp=101.0), 11.0)
    summary.add(heartbeat('killed@c', freq=1.0), 10.0)
    out = summary.result(now=12.5)
    assert out['workers']['up@a']['online'] is True and out['workers']['up@a']['seconds_since_heard'] == 2.5
    assert out['workers']['bye@b']['offline_reason'] == 'worker-offline'
    assert out['workers']['killed@c']['offline_reason'] == 'no heartbeat for 2.5s (more than 2.0s)'
    assert out['offline'] == ['bye@b', 'killed@c']
    # A worker back online after a goodbye is online.
    summary.add(dict(type='worker-online', hostname='bye@b', freq=2.0), 12.0)
    assert summary.result(now=12.5)['workers']['bye@b']['online'] is True


def test_hints():
    assert EventSummary().hint().startswith('no events arrived: no worker sent even a heartbeat')

    silent = EventSummary()
    silent.add(heartbeat('quiet@a', processed=3), 1.0)
    silent.add(heartbeat('quiet@a', processed=5), 2.0)
    assert silent.hint() == ('quiet@a ran tasks but sent no task events: task events are off (no -E); turn task '
                             'events on with celeryops.fleet.celery_worker (events: true) or start the workers '
                             'with -E.')
    assert silent.result(now=2.0)['workers']['quiet@a']['task_events'] is False

    idle = EventSummary()
    idle.add(heartbeat('idle@a', processed=3), 1.0)
    assert idle.hint().startswith('no task events arrived although 1 worker(s) sent heartbeats')
    assert idle.result(now=1.0)['workers']['idle@a']['task_events'] is None

    # Only worker events asked for: no task events is no news.
    workers_only = EventSummary(types=['worker-heartbeat'])
    workers_only.add(heartbeat('idle@a', processed=3, active=1), 1.0)
    assert workers_only.hint() is None

    no_exchange = EventSummary()
    no_exchange.no_exchange = True
    assert no_exchange.hint().startswith('no events: the event exchange celeryev does not exist')


def test_undecodable_and_odd_events_do_not_break_the_summary():
    summary = EventSummary()
    for odd in (None, 'text', {'no': 'type'}, {'type': 3}):
        assert not summary.add(odd, 1.0)
    assert summary.add({'type': 'task-succeeded', 'uuid': 'x', 'runtime': 'n/a'}, 1.0)
    out = summary.result(now=1.0)
    assert out['undecodable'] == 4 and out['tasks']['<unknown>']['runtime'] is None


def test_helpers():
    assert routing_key(None) == '#' and routing_key(['task-failed', 'worker-offline']) == '#'
    assert routing_key(['worker-heartbeat']) == 'worker.#'
    assert [percentile([1, 2, 3, 4], f) for f in (0.5, 0.95, 0.01)] == [2, 4, 1]
    assert traceback_line(TRACEBACK) == 'File "/srv/proj/tasks.py", line 12, in charge'
    assert traceback_line('KeyError: x') == 'KeyError: x'
    assert traceback_line(None) is None and traceback_line('  ') is None


# -- hostile events: counted as undecodable and skipped, never a traceback ------------------------

import json  # noqa: E402
import random  # noqa: E402

from ansible_collections.celeryops.fleet.plugins.module_utils._events import readable_event  # noqa: E402

TASK_TYPES_AND_WORKER = ('task-received', 'task-started', 'task-succeeded', 'task-failed', 'task-sent',
                         'worker-heartbeat', 'worker-online', 'worker-offline')


def test_events_with_fields_of_other_types_are_undecodable():
    """Where the summary keeps a name (a dict key) or sorts by time, another type would crash it."""
    summary = EventSummary()
    rogue = [task('received', ['a'], name='proj.add'), task('received', 'a', name=['proj.add']),
             task('failed', {'u': 1}), task('failed', 'b', timestamp='yesterday'), heartbeat(['w@h']),
             dict(heartbeat('w2@h'), timestamp=[1]), task('succeeded', 'c', host=5)]
    for event in rogue:
        assert not summary.add(event, 1.0), event
    summary.add(task('failed', 'd', timestamp=5.0), 1.0)
    out = summary.result(now=1.0)
    assert out['undecodable'] == len(rogue) and out['failures_total'] == 1 and set(out['workers']) == {'w1@web1'}


def test_a_summary_takes_any_junk():
    rng = random.Random(13)
    keys = ['type', 'hostname', 'uuid', 'name', 'timestamp', 'runtime', 'freq', 'active', 'processed', 'exception',
            'traceback', 'loadavg']
    values = [None, True, 0, -1, 2.5, '', 'x', [], ['x'], {}, {'a': 1}] + list(TASK_TYPES_AND_WORKER)

    def junk_event():
        return dict((rng.choice(keys), rng.choice(values)) for _unused in range(rng.randrange(8)))
    summary = EventSummary(max_failures=5)
    for _unused in range(3000):
        event = junk_event() if rng.random() < 0.9 else rng.choice(values)
        assert summary.add(event, rng.random() * 10) in (True, False)
        assert readable_event(event) or summary.undecodable
    out = summary.result(now=20.0)
    json.dumps(out)
    assert out['undecodable'] > 0 and out['events'] > 0
