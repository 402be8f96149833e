# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark helper (bench/ only, not shipped as a plugin of the collection).

Records, per task, the seconds from the task's start to its result on the controller, the
same span ansible.posix.profile_tasks reports, plus a small summary of the result, and
writes them as JSON to $BENCH_TIMER_FILE when the playbook ends.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: bench_timer
type: aggregate
short_description: per-task wall time as JSON, for bench/run
description: Writes [{name, action, seconds, status, summary}] to the file named by BENCH_TIMER_FILE.
requirements:
  - enable in configuration
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


def _summary(result):
    out = {}
    queues = result.get('queues')
    if isinstance(queues, list):
        out['queues'] = len(queues)
        out['messages'] = sum(q.get('messages') or 0 for q in queues if isinstance(q, dict))
        out['unacked'] = sum(q.get('unacked') or 0 for q in queues if isinstance(q, dict))
        out['removed'] = sum(q.get('removed') or 0 for q in queues if isinstance(q, dict))
        out['before'] = sum(q.get('before') or 0 for q in queues if isinstance(q, dict))
        tasks = {}
        for q in queues:
            for name, n in ((q.get('tasks') or {}) if isinstance(q, dict) else {}).items():
                tasks[name] = tasks.get(name, 0) + n
        if tasks:
            out['tasks'] = tasks
    try:
        out['result_bytes'] = len(json.dumps(result, default=str))
    except (TypeError, ValueError):
        pass
    workers = result.get('workers')
    if isinstance(workers, dict):  # celery_worker_info: the sections each node answered
        out['sections'] = dict((node, sorted(info)) for node, info in workers.items() if isinstance(info, dict))
    for key in ('msg', 'rc', 'ping', 'changed', 'online', 'missing', 'unexpected', 'duplicates', 'count', 'elapsed',
                'summary'):
        if key in result:
            out[key] = result[key]
    if 'stdout' in result:
        out['stdout_lines'] = len(result['stdout'].splitlines())
    return out


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'bench_timer'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self.tasks = []
        self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.current = dict(name=task.get_name(), action=task.action, start=time.perf_counter())

    def _done(self, result, status):
        if self.current is None:
            return
        record = dict(self.current)
        record['seconds'] = time.perf_counter() - record.pop('start')
        record['status'] = status
        record['summary'] = _summary(result._result)
        self.tasks.append(record)

    def v2_runner_on_ok(self, result):
        self._done(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._done(result, 'failed')

    def v2_runner_on_unreachable(self, result):
        self._done(result, 'unreachable')

    def v2_runner_on_skipped(self, result):
        self._done(result, 'skipped')

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get('BENCH_TIMER_FILE')
        if path:
            with open(path, 'w') as f:
                json.dump(dict(tasks=self.tasks), f)
