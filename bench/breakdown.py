"""4. celery_queue_info breakdown over a 1,000,000-message Redis backlog.

The backlog (BENCH_QUICK: 200,000; BENCH_BACKLOG) is 5 task names in fixed shares, 10 % of
the messages on priority step 3, copies of envelopes Celery wrote. Measured:
  - RedisQueues.breakdown() in this process (the module's code without Ansible), with the
    client-side wait for the reply to every LRANGE it sends (one chunk ahead);
  - the loop breakdown() had before (task_name_of() per element), on the same data,
    breakdown() reading one LRANGE at a time (as before it read one chunk ahead), and
    reading alone (_chunks, elements dropped): what any parser has to add to;
  - the module task (ansible-playbook, one task), its per-task time and wall time;
  - the longest single Redis command during each run, from the slowlog: SLOWLOG RESET and
    slowlog-log-slower-than 10000 (10 ms) before, SLOWLOG GET after; the old settings are
    put back afterwards (bench/lib.py cleanup restores them even after a crash).
"""

import json
import os
import time

import lib

N = int(os.environ.get('BENCH_BACKLOG') or (200000 if lib.QUICK else 1000000))
QUEUE = 'bench.backlog'
SLOWLOG_US = 10000
SLOWLOG_LEN = 1024


class Slowlog(object):
    """Commands of 10 ms or more, server side. The slowlog is server-wide: other clients' entries
    are kept apart by the key they name (ours all start with 'bench.' or are the module's
    discovery/unacked reads of db %d)."""

    def __init__(self, client):
        self.client = client
        self.saved_path = lib.SLOWLOG_SAVED

    def __enter__(self):
        saved = {}
        for name in ('slowlog-log-slower-than', 'slowlog-max-len'):
            saved.update(self.client.config_get(name))
        saved = dict((k if isinstance(k, str) else k.decode(), v if isinstance(v, str) else v.decode())
                     for k, v in saved.items())
        os.makedirs(lib.STATE, exist_ok=True)
        if not os.path.exists(self.saved_path):  # keep the first (original) settings if a run died
            with open(self.saved_path, 'w') as f:
                json.dump(saved, f)
        self.client.config_set('slowlog-log-slower-than', SLOWLOG_US)
        self.client.config_set('slowlog-max-len', SLOWLOG_LEN)
        return self

    def reset(self):
        self.client.slowlog_reset()

    def read(self):
        """(longest of ours in ms or None, longest of all in ms or None, our entries)."""
        entries = self.client.slowlog_get(SLOWLOG_LEN)
        ours, longest_all = [], None
        for e in entries:
            ms = e['duration'] / 1000.0
            longest_all = ms if longest_all is None else max(longest_all, ms)
            command = e['command'] if isinstance(e['command'], str) else e['command'].decode('utf-8', 'replace')
            if 'bench.' in command or 'unacked' in command or '_kombu.binding' in command:
                ours.append(dict(ms=ms, command=command[:80]))
        longest = max([x['ms'] for x in ours]) if ours else None
        return longest, longest_all, ours

    def __exit__(self, *exc):
        lib.restore_slowlog(self.client)


def main():
    lib.reset_redis()
    client = lib.redis_client()
    envelopes = lib.Envelopes()
    start = time.perf_counter()
    expected, mean_size = lib.fill_backlog(client, envelopes, QUEUE, N, seed=42)
    fill_seconds = time.perf_counter() - start
    depth = dict((s, client.llen(lib.key_of(QUEUE, s))) for s in (0, 3, 6, 9))
    lib.log('filled %d messages (%.0f bytes each on average) in %.1fs; %r' % (N, mean_size, fill_seconds, depth))
    used_memory = client.info('memory')['used_memory']

    _queues = lib.module_utils()
    from ansible_collections.celeryops.fleet.plugins.module_utils import _redis_queues, _messages
    params = lib.module_params(lib.REDIS_URL)
    runs = dict(inprocess=[], reference=[], one_at_a_time=[], fetch=[], module_task=[], module_wall=[])
    lrange_ms, slow_ours, slow_all, slow_entries = [], [], [], []

    def reference_breakdown(queues):
        """The loop breakdown() had before bench/ changed it: task_name_of() on every element."""
        counts = {}
        for _step, key in queues.layout.keys(QUEUE):
            for chunk in queues._chunks(key):
                for raw in chunk:
                    task = _messages.task_name_of(raw)
                    counts[task] = counts.get(task, 0) + 1
        return counts

    def one_at_a_time_breakdown(queues):
        """breakdown() as it was before it read one chunk ahead: one LRANGE, then its counting."""
        counts = {}
        for _step, key in queues.layout.keys(QUEUE):
            start = 0
            while True:
                chunk = queues.client.lrange(key, start, start + _redis_queues.READ_CHUNK - 1)
                for task, n in _messages.count_task_names(chunk).items():
                    counts[task] = counts.get(task, 0) + n
                if len(chunk) < _redis_queues.READ_CHUNK:
                    break
                start += _redis_queues.READ_CHUNK
        return counts

    def watch(slowlog):
        ours, everyone, entries = slowlog.read()
        slow_ours.append(ours)
        slow_all.append(everyone)
        slow_entries.extend(entries)

    with Slowlog(client) as slowlog:
        for round_ in range(lib.REPEAT):
            # The module's breakdown, in process, the wait for each LRANGE reply timed from the client
            # (each LRANGE is sent one chunk ahead, before the previous chunk is counted).
            queues = _queues.open_queues(params)
            real_reply = queues.client.parse_response

            def timed_reply(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return real_reply(*args, **kwargs)
                finally:
                    lrange_ms.append((time.perf_counter() - t) * 1000)
            queues.client.parse_response = timed_reply
            slowlog.reset()
            t = time.perf_counter()
            counts = queues.breakdown(QUEUE)
            runs['inprocess'].append(time.perf_counter() - t)
            watch(slowlog)
            if counts != expected:
                raise AssertionError('breakdown counted %r, expected %r' % (counts, expected))
            queues.client.parse_response = real_reply

            # The same with task_name_of() per element, as before; then reading alone (the floor).
            t = time.perf_counter()
            counts = reference_breakdown(queues)
            runs['reference'].append(time.perf_counter() - t)
            if counts != expected:
                raise AssertionError('the reference counted %r, expected %r' % (counts, expected))
            t = time.perf_counter()
            counts = one_at_a_time_breakdown(queues)
            runs['one_at_a_time'].append(time.perf_counter() - t)
            if counts != expected:
                raise AssertionError('one LRANGE at a time counted %r, expected %r' % (counts, expected))
            t = time.perf_counter()
            n = 0
            for _step, key in queues.layout.keys(QUEUE):
                for chunk in queues._chunks(key):
                    n += len(chunk)
            runs['fetch'].append(time.perf_counter() - t)
            queues.close()

            # The module task.
            slowlog.reset()
            wall, task = lib.run_playbook('queue_info.yml', {'broker_url': lib.REDIS_URL, 'queues': [QUEUE],
                                                             'breakdown': True})
            watch(slowlog)
            if task['summary'].get('tasks') != expected:
                raise AssertionError('the module counted %r, expected %r' % (task['summary'], expected))
            runs['module_task'].append(task['seconds'])
            runs['module_wall'].append(wall)
            lib.log('round %d/%d: in process %.2fs (before the change %.2fs, one LRANGE at a time %.2fs, reading '
                    'alone %.2fs), module task %.2fs, wall %.2fs; slowlog max %s ms' % (
                        round_ + 1, lib.REPEAT, runs['inprocess'][-1], runs['reference'][-1],
                        runs['one_at_a_time'][-1], runs['fetch'][-1],
                        runs['module_task'][-1], wall, max([x for x in slow_ours if x is not None] or [None])))

    out = dict(n=N, queue=QUEUE, mean_size=mean_size, fill_seconds=fill_seconds, depth=depth, expected=expected,
               used_memory=used_memory, read_chunk=_redis_queues.READ_CHUNK,
               lrange_calls_per_run=len(lrange_ms) // lib.REPEAT,
               lrange_ms=dict((k, v) for k, v in lib.summary(lrange_ms).items() if k != 'values'),
               slowlog_threshold_ms=SLOWLOG_US / 1000.0,
               slowlog_ours_max_ms=max([x for x in slow_ours if x is not None] or [0]) if any(
                   x is not None for x in slow_ours) else None,
               slowlog_all_max_ms=max([x for x in slow_all if x is not None]) if any(
                   x is not None for x in slow_all) else None,
               slowlog_entries=sorted(slow_entries, key=lambda e: -e['ms'])[:10],
               slowlog_ours_count=len(slow_entries),
               # LRANGEs watched: counted in process, and the module sends as many per run.
               lrange_watched=2 * len(lrange_ms))
    for name, values in runs.items():
        out[name] = lib.summary(values)
    out['commands'] = dict(
        module=lib.playbook_command('queue_info.yml', {'broker_url': lib.REDIS_URL, 'queues': [QUEUE],
                                                       'breakdown': True}),
        inprocess='in process (bench/breakdown.py): open_queues(params).breakdown(%r)' % QUEUE,
        slowlog='redis-cli CONFIG SET slowlog-log-slower-than %d; CONFIG SET slowlog-max-len %d; SLOWLOG RESET; '
                '<run>; SLOWLOG GET %d; CONFIG SET both back' % (SLOWLOG_US, SLOWLOG_LEN, SLOWLOG_LEN))
    lib.write_result('breakdown', out)
    lib.reset_redis()


if __name__ == '__main__':
    main()
