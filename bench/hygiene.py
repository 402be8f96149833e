"""11. celery_broker_info on a large Redis: its longest command, against the 50 ms the issue allows.

The bench's Redis database holds what a neglected Celery broker piles up: a queue of BACKLOG ready messages (real
envelopes, 10 % on priority step 3), HELD messages in kombu's `unacked` hash and `unacked_index` (scores two hours
old: overdue, their holder gone), ORPHANS reply lists `<uuid>.reply.celery.pidbox` (no binding: orphaned), and
RESULTS `celery-task-meta-*` keys without expiry. celery_broker_info runs through ansible-playbook, REPEAT times,
with `result_backend` (the same database) and its defaults (message_sample 10,000 per queue). Measured per run: the
task's time, and the longest Redis command of the run from the slowlog (slowlog-log-slower-than 10 ms, the server's
own timing; the old settings are put back afterwards, also after a crash: bench/lib.py cleanup). The result is
checked: the overdue, orphan and result findings count what was written.
"""

import json
import os
import time

import lib
from breakdown import Slowlog

BACKLOG = 20000 if lib.QUICK else 200000
HELD = 10000 if lib.QUICK else 100000
ORPHANS = 200 if lib.QUICK else 2000
RESULTS = 5000 if lib.QUICK else 50000
QUEUE = 'bench.hygiene'
SECTION = '## 11. celery_broker_info on a large Redis: the longest command'
LIMIT_MS = 50.0


def loadavg():
    with open('/proc/loadavg') as handle:
        return ' '.join(handle.read().split()[:3])


def fill(client, envelopes):
    lib.fill_backlog(client, envelopes, QUEUE, BACKLOG, seed=7)
    old = time.time() - 7200
    pipe = client.pipeline(transaction=False)
    for n in range(HELD):
        tag = 'bench-held-%08d' % n
        message = json.loads(envelopes.make(QUEUE, lib.TASK_MIX[n % len(lib.TASK_MIX)][0]))
        pipe.hset('unacked', tag, json.dumps([message, QUEUE, QUEUE]))
        pipe.zadd('unacked_index', {tag: old})
        if len(pipe) >= 2000:
            pipe.execute()
    for n in range(ORPHANS):
        pipe.rpush('bench-orphan-%06d.reply.celery.pidbox' % n, json.dumps({'bench@host': {'ok': 'pong'}}))
    for n in range(RESULTS):
        pipe.set('celery-task-meta-bench-%08d' % n, json.dumps({'status': 'SUCCESS', 'result': n}))
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()


def main():
    lib.reset_redis()
    client = lib.redis_client()
    envelopes = lib.Envelopes()
    start = time.perf_counter()
    fill(client, envelopes)
    lib.log('hygiene: filled %d ready, %d held, %d orphan replies, %d results in %.1fs (%d keys)'
            % (BACKLOG, HELD, ORPHANS, RESULTS, time.perf_counter() - start, client.dbsize()))
    args = {'broker_url': lib.REDIS_URL, 'result_backend': lib.REDIS_URL, 'orphan_after': 1, 'timeout': 0.5}
    playbook = os.path.join(lib.PLAYBOOKS, 'hygiene.yml')
    with open(playbook, 'w') as handle:
        handle.write('# Written by bench/hygiene.py: one celery_broker_info task.\n'
                     '- hosts: localhost\n  gather_facts: false\n  tasks:\n'
                     '    - name: Ask the broker about its hygiene\n'
                     '      celeryops.fleet.celery_broker_info: "{{ args }}"\n')
    runs = []
    try:
        time.sleep(1.5)   # orphan_after 1 s: the reply lists were written idle before the first run
        with Slowlog(client) as slowlog:
            # The slowlog must see a slow command to be believed: a Lua loop of 20 ms or more, before the runs.
            slowlog.reset()
            client.eval('local i = 0 while i < 3000000 do i = i + 1 end return i', 0)
            calibration = max([e['duration'] / 1000.0 for e in client.slowlog_get(1024)] or [0.0])
            if calibration < 10:
                raise AssertionError('the slowlog did not record a %s ms Lua loop: the figures would mean nothing'
                                     % calibration)
            for round_ in range(lib.REPEAT):
                slowlog.reset()
                seconds, tasks = lib.run_playbook_tasks('hygiene.yml', {'args': args})
                entries = client.slowlog_get(1024)
                longest = max([e['duration'] / 1000.0 for e in entries] or [0.0])
                slowest = max(entries, key=lambda e: e['duration'])['command'][:60] if entries else b''
                shown = slowest.decode('utf-8', 'replace') if isinstance(slowest, bytes) else str(slowest)
                runs.append(dict(wall=seconds, task=tasks[0]['seconds'], longest_ms=longest, slowest=shown))
                lib.log('hygiene round %d/%d: task %.2fs, longest command %.1f ms (%s)'
                        % (round_ + 1, lib.REPEAT, runs[-1]['task'], longest, runs[-1]['slowest']))
    finally:
        os.unlink(playbook)
    summary = tasks[0]['summary'].get('summary')   # the module's own summary, in the callback's record
    if not summary or summary.get('orphan_reply') != ORPHANS or not summary.get('overdue_unacked') \
            or not summary.get('result_without_ttl'):
        raise AssertionError('celery_broker_info did not find what was written: %r' % (summary,))
    data = dict(backlog=BACKLOG, held=HELD, orphans=ORPHANS, results=RESULTS, runs=runs, summary=summary, calibration=calibration,
                when=time.strftime('%Y-%m-%d %H:%M', time.gmtime()), load=loadavg())
    lib.write_result('hygiene', data)
    lib.write_section(SECTION, render(data))
    lib.reset_redis()


def render(d):
    task = lib.summary(r['task'] for r in d['runs'])
    longest = lib.summary(r['longest_ms'] for r in d['runs'])
    worst = max(d['runs'], key=lambda r: r['longest_ms'])
    met = longest['max'] <= LIMIT_MS
    return '\n'.join([
        SECTION, '',
        'Written by `bench/hygiene.py` on %s (UTC), load average %s at the end. The bench\'s Redis database holds a '
        'queue of %s ready messages (real envelopes), %s held messages in `unacked`/`unacked_index` (two hours old, '
        'their holder gone), %s orphan reply lists and %s results without expiry. celery_broker_info runs through '
        'ansible-playbook %d times (`result_backend` the same database, `orphan_after: 1`, its defaults otherwise: '
        'message_sample 10,000 per queue); the longest command of each run comes from the server\'s slowlog '
        '(threshold 10 ms).' % (
            d['when'], d['load'], format(d['backlog'], ','), format(d['held'], ','), format(d['orphans'], ','),
            format(d['results'], ','), len(d['runs'])), '',
        '| measure | median [min–max] | target |', '|---|---|---|',
        '| module task | %.2f s [%.2f–%.2f] | – |' % (task['median'], task['min'], task['max']),
        '| longest Redis command of a run | %.1f ms [%.1f–%.1f] (0: none of 10 ms or more) | ≤ %.0f ms: **%s** |' % (
            longest['median'], longest['min'], longest['max'], LIMIT_MS, 'met' if met else 'not met'), '',
        '- The slowest command seen: `%s` (%.1f ms). The slowlog was checked first: it recorded a Lua loop of %.1f ms.'
        % (worst['slowest'] or 'none of 10 ms or more', worst['longest_ms'], d['calibration']),
        '- Findings of the last run (the summary): %s.' % ', '.join(
            '%s %d' % (kind, n) for kind, n in sorted((d['summary'] or {}).items())), ''])


if __name__ == '__main__':
    main()
