"""7. Peak memory of the module process over a 1 GB Redis queue.

celery_queue_info (breakdown and peek) and celery_queue (purge by task_names, in check mode and for real) run
through ansible-playbook over a queue of about 1 GB (BENCH_MEMORY_MB; BENCH_QUICK: 256), filled twice: with
1 MiB messages, then with copies of small envelopes Celery wrote. Measured: the peak resident set size of the
module process as Ansible starts it (bench/maxrss.py as the interpreter: getrusage(RUSAGE_CHILDREN) around
the one process that runs AnsiballZ and the module), against the same tasks on an empty queue, and against
what reading the list whole takes: `redis-cli LRANGE q 0 -1`, a redis-py script calling lrange(q, 0, -1),
and `redis-cli --bigkeys` (lengths only). With BENCH_MEMORY_BEFORE=<git revision>, the read-only variants also run
once with the collection as it was at that revision, over the 1 MiB messages.

Uses its own Redis database, 7 (BENCH_MEMORY_DB; refused if it holds keys of someone else), emptied after.
Runs on its own or from bench/run, and writes its section into bench/RESULTS.md (RESULTS.quick.md with
BENCH_QUICK, or BENCH_RESULTS), leaving the other sections as they are:

    source scripts/bootstrap.sh && place_collection && python bench/memory.py
"""

import base64
import json
import os
import shlex
import shutil
import sys
import tempfile
import time

os.environ['BENCH_REDIS_DB'] = os.environ.get('BENCH_MEMORY_DB', '7')
import lib  # noqa: E402  (lib reads BENCH_REDIS_DB when imported)

MIB = 1024 * 1024
TOTAL = int(os.environ.get('BENCH_MEMORY_MB') or (256 if lib.QUICK else 1024)) * MIB
BIG = MIB
QUEUE = 'bench.memory'
EMPTY = 'bench.memory-empty'
REPEAT = int(os.environ.get('BENCH_MEMORY_REPEAT') or (1 if lib.QUICK else 3))
MAXRSS = os.path.join(lib.BENCH, 'maxrss.py')
KEEP, DROP = 'fleet_tasks.add', 'fleet_tasks.mail'  # the purge drops DROP's messages, keeps KEEP's
SECTION = '## 7. Peak memory of the module process over a 1 GB Redis queue'


class Meter(object):
    """Peak RSS of one process: a module run by ansible-playbook, or a command."""

    def __init__(self, workdir):
        self.out = os.path.join(workdir, 'maxrss.txt')
        self.interpreter = os.path.join(workdir, 'python-maxrss')
        with open(self.interpreter, 'w') as f:
            f.write('#!/bin/sh\nexec %s %s %s module %s "$@"\n' % tuple(
                shlex.quote(x) for x in (sys.executable, MAXRSS, self.out, sys.executable)))
        os.chmod(self.interpreter, 0o755)

    def _take(self):
        with open(self.out) as f:
            lines = [line.split() for line in f if line.strip()]
        os.unlink(self.out)
        return lines

    def module(self, playbook, extra_vars, collections=None):
        """(peak MiB of the module process, wall seconds, the task's summary) of one playbook run. With the
        collection found in ``collections`` (an earlier one), a failed task is no error: its summary says why."""
        env = {'ANSIBLE_PYTHON_INTERPRETER': self.interpreter}
        if collections:
            env['ANSIBLE_COLLECTIONS_PATH'] = collections
        try:
            wall, task = lib.run_playbook(playbook, extra_vars, env=env)
            summary = task['summary']
        except RuntimeError as error:
            if not collections:
                raise
            wall, summary = None, dict(failed=str(error)[-400:])
        runs = [line for line in self._take() if line[0] == 'module']
        if len(runs) != 1 or (runs[0][2] != '0' and not collections):
            raise RuntimeError('expected one module process, got %r' % runs)
        return int(runs[0][1]) / 1024.0, wall, summary

    def command(self, argv, stdout=None):
        """(peak MiB, wall seconds) of one command."""
        import subprocess
        start = time.perf_counter()
        subprocess.run([sys.executable, MAXRSS, self.out, 'command'] + argv, check=True, stdout=stdout or
                       subprocess.DEVNULL, cwd=lib.ROOT)
        wall = time.perf_counter() - start
        (line,) = self._take()
        return int(line[1]) / 1024.0, wall


def big_message(envelopes, task):
    """An envelope of 1 MiB (a protocol 2 body whose one argument makes it that long), with its own task id."""
    envelope = json.loads(envelopes.make(QUEUE, task))
    pad = (BIG - len(json.dumps(envelope))) * 3 // 4 - 100
    body = json.dumps([['x' * pad], {}, {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}])
    envelope['body'] = base64.b64encode(body.encode()).decode()
    return json.dumps(envelope)


def fill(client, make, batch_bytes=32 * MIB):
    """RPUSH ``make(task)`` of KEEP and DROP in turn until TOTAL bytes; the number of elements."""
    pipe, batch, size, total, n = client.pipeline(transaction=False), [], 0, 0, 0
    while total < TOTAL:
        raw = make((KEEP, DROP)[n % 2])
        batch.append(raw)
        size += len(raw)
        total += len(raw)
        n += 1
        if len(batch) >= 1000 or size >= batch_bytes:
            pipe.rpush(QUEUE, *batch).execute()
            batch, size = [], 0
    if batch:
        pipe.rpush(QUEUE, *batch).execute()
    return n


def collection_at(revision, workdir):
    """A collections path holding celeryops.fleet as it was at ``revision`` (git archive)."""
    import subprocess
    path = os.path.join(workdir, 'before')
    target = os.path.join(path, 'ansible_collections', 'celeryops', 'fleet')
    os.makedirs(target)
    archive = subprocess.run(['git', '-C', lib.ROOT, 'archive', revision], check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(['tar', '-x', '-C', target], input=archive, check=True)
    return path


def measure(meter, client, label, refill, before=None):
    """Every module variant over QUEUE as ``refill`` leaves it; the list is refilled after the real purge.
    ``before``: (revision, collections path) to run the read-only variants with once more."""
    n, size = refill()
    url = lib.REDIS_URL
    variants = [
        ('celery_queue_info breakdown + peek 10', 'queue_info.yml',
         dict(broker_url=url, queues=[QUEUE], breakdown=True, peek=10)),
        ('celery_queue task_names, check mode', 'queue_purge.yml',
         dict(broker_url=url, queues=[QUEUE], task_names=[DROP], check=True)),
        ('celery_queue task_names', 'queue_purge.yml', dict(broker_url=url, queues=[QUEUE], task_names=[DROP])),
    ]
    rows = []
    for name, playbook, extra in variants:
        peaks, walls = [], []
        real_purge = 'task_names' in extra and not extra.get('check')
        for round_ in range(1 if real_purge else REPEAT):  # a real purge is followed by a refill of TOTAL
            peak, wall, summary = meter.module(playbook, extra)
            if 'breakdown' in extra and summary.get('tasks') != {KEEP: (n + 1) // 2, DROP: n // 2}:
                raise AssertionError('%s: breakdown %r over %d messages' % (label, summary, n))
            if 'task_names' in extra and summary.get('removed') != n // 2:
                raise AssertionError('%s: %s removed %r, expected %d' % (label, name, summary, n // 2))
            if real_purge:
                if client.llen(QUEUE) != (n + 1) // 2 or client.keys('*_celeryops.filter.*'):
                    raise AssertionError('%s: the purge left %d (expected %d) or a key of its own'
                                         % (label, client.llen(QUEUE), (n + 1) // 2))
                client.unlink(QUEUE)
                n, size = refill()
            peaks.append(peak)
            walls.append(wall)
            lib.log('%s, %s, round %d: peak %.1f MiB, wall %.1f s' % (label, name, round_ + 1, peak, wall))
        rows.append(dict(variant=name, peak=lib.summary(peaks), wall=lib.summary(walls),
                         command=lib.playbook_command(playbook, extra)))
    for name, playbook, extra in (variants[:2] if before else ()):
        peak, wall, summary = meter.module(playbook, extra, collections=before[1])
        lib.log('%s, %s, at %s: peak %.1f MiB, wall %s s %s' % (label, name, before[0], peak, wall, summary))
        failed = ' (the task failed)' if wall is None else ''
        rows.append(dict(variant='%s, the collection at %s%s' % (name, before[0], failed),
                         peak=lib.summary([peak]), wall=lib.summary([wall or 0]),
                         command='ANSIBLE_COLLECTIONS_PATH=<git archive %s> %s' % (
                             before[0], lib.playbook_command(playbook, extra))))
    return dict(label=label, messages=n, bytes=size, rows=rows)


def baseline(meter):
    url = lib.REDIS_URL
    rows = []
    for name, playbook, extra in (
            ('celery_queue_info breakdown + peek 10', 'queue_info.yml',
             dict(broker_url=url, queues=[EMPTY], breakdown=True, peek=10)),
            ('celery_queue task_names', 'queue_purge.yml', dict(broker_url=url, queues=[EMPTY], task_names=[DROP]))):
        peaks = [meter.module(playbook, extra)[0] for _round in range(REPEAT)]
        rows.append(dict(variant=name, peak=lib.summary(peaks), command=lib.playbook_command(playbook, extra)))
    return rows


def whole_list_readers(meter):
    """What reading the list whole needs, for comparison: redis-cli and a redis-py script."""
    db = str(lib.REDIS_DB)
    script = ("import redis; r = redis.Redis(db=%s); elements = r.lrange(%r, 0, -1); "
              "print(sum(b'fleet_tasks.mail' in e for e in elements))" % (db, QUEUE))
    out = []
    for name, argv in (
            ('redis-cli LRANGE %s 0 -1 > /dev/null' % QUEUE, ['redis-cli', '-n', db, 'LRANGE', QUEUE, '0', '-1']),
            ('redis-py script: r.lrange(q, 0, -1), then count', [sys.executable, '-c', script]),
            ('redis-cli --bigkeys (lengths only)', ['redis-cli', '-n', db, '--bigkeys'])):
        peak, wall = meter.command(argv)
        shown = ['python'] + argv[1:] if argv[0] == sys.executable else argv
        out.append(dict(variant=name, peak=peak, wall=wall, command=lib.show(shown)))
        lib.log('%s: peak %.1f MiB, wall %.1f s' % (name, peak, wall))
    return out


def main():
    lib.reset_redis()
    client = lib.redis_client()
    workdir = tempfile.mkdtemp(prefix='celeryops-memory.')
    try:
        meter = Meter(workdir)
        envelopes = lib.Envelopes()
        empty = baseline(meter)

        def refill_big():
            client.unlink(QUEUE)
            n = fill(client, lambda task: big_message(envelopes, task))
            return n, client.memory_usage(QUEUE, samples=0)

        def refill_small():
            client.unlink(QUEUE)
            n = fill(client, lambda task: envelopes.make(QUEUE, task))
            return n, client.memory_usage(QUEUE, samples=0)

        revision = os.environ.get('BENCH_MEMORY_BEFORE')
        before = (revision, collection_at(revision, workdir)) if revision else None
        big = measure(meter, client, '1 MiB messages', refill_big, before)
        readers = whole_list_readers(meter)
        client.unlink(QUEUE)
        small = measure(meter, client, 'small messages', refill_small)
        client.unlink(QUEUE)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        lib.reset_redis()
        client.flushdb()
    lib.module_utils()  # puts the collection on sys.path
    from ansible_collections.celeryops.fleet.plugins.module_utils import _redis_queues
    data = dict(empty=empty, big=big, small=small, readers=readers, chunk_bytes=_redis_queues.CHUNK_BYTES,
                read_chunk=_redis_queues.READ_CHUNK, total=TOTAL, repeat=REPEAT,
                when=time.strftime('%Y-%m-%d %H:%M', time.gmtime()), db=lib.REDIS_DB,
                load=open('/proc/loadavg').read().split()[:3])
    lib.write_result('memory', data)
    lib.write_section(SECTION, render(data))


def render(d):
    mib = 1024.0 * 1024
    baseline_peak = max(row['peak']['median'] for row in d['empty'])
    lines = [SECTION, '',
             'Written by `bench/memory.py` on %s (UTC), load average %s at the end. A Redis list of about %d MiB '
             '(Redis db %d, emptied after) is read by the modules through ansible-playbook; **peak** is the largest '
             'resident set of the module process as Ansible starts it (AnsiballZ and the module, measured by '
             '`bench/maxrss.py` as its interpreter: `getrusage(RUSAGE_CHILDREN)` around that one process), median '
             '[min–max] of %d runs (a real purge, followed by a refill, once). Runs with the collection at an '
             'earlier revision (BENCH_MEMORY_BEFORE) show what the modules took before reads were bounded by bytes.'
             % (d['when'], ' '.join(d['load']), d['total'] // MIB, d['db'], d['repeat']), '',
             '| queue | variant | peak RSS | over the empty queue | wall | command |', '|---|---|---|---|---|---|']

    def peak(s):
        return '%.0f MiB [%.0f–%.0f]' % (s['median'], s['min'], s['max'])
    for row in d['empty']:
        lines.append('| empty | %s | %s | – | – | `%s` |' % (row['variant'], peak(row['peak']), row['command']))
    for data in (d['big'], d['small']):
        label = '%s: %s messages, %.0f MiB in Redis' % (
            data['label'], format(data['messages'], ','), data['bytes'] / mib)
        for row in data['rows']:
            lines.append('| %s | %s | **%s** | +%.0f MiB | %.1f s | `%s` |' % (
                label, row['variant'], peak(row['peak']), row['peak']['median'] - baseline_peak,
                row['wall']['median'], row['command']))
    for row in d['readers']:
        lines.append('| 1 MiB messages | %s | %.0f MiB | – | %.1f s | `%s` |' % (
            row['variant'], row['peak'], row['wall'], row['command']))
    worst = max(row['peak']['max'] for data in (d['big'], d['small']) for row in data['rows']
                if 'the collection at' not in row['variant'])
    lines += ['', '**Bound.** A read holds at most %d elements and, after the first (one element), as many as fit '
              'in %d MiB if they are no larger than the largest of the read before (one, if a single element is '
              'larger). The module holds at most two reads at once (the one being counted and the next, sent '
              'ahead), so its peak stays within about 2 × (%d MiB + the largest message), plus what parsing them '
              'takes, of its peak on an empty queue, whatever the backlog. Where messages grow from one read to '
              'the next (a run of small ones followed at once by large ones), one read holds as many times %d MiB '
              'as they grew, at most %d of the large ones. Measured worst over these runs: %.0f MiB, against '
              '%.0f MiB on the empty queue.'
              % (d['read_chunk'], d['chunk_bytes'] // MIB, d['chunk_bytes'] // MIB, d['chunk_bytes'] // MIB,
                 d['read_chunk'], worst, baseline_peak), '']
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
