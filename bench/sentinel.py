"""9. celery_queue_info through Redis Sentinel vs direct to the master: the extra cost of Sentinel resolution.

A private Sentinel set of the bench's own (tests/integration/private_brokers.py's PrivateSentinelSet: a master, one
replica and three Sentinels, with passwords, on free loopback ports in a temporary directory, stopped by pid at the
end) holds QUEUES Redis queues of MESSAGES real Celery envelopes each (lib.Envelopes). The same playbook of N
identical celery_queue_info tasks over those queues (bench/playbooks/per_task_sentinel.yml) runs with
``broker_url: sentinel://...;sentinel://...;sentinel://...`` (master_name, sentinel_password) and with
``broker_url: redis://`` to the master the Sentinels name, and the empty playbook as the baseline: per round, a
variant's cost per task is (its wall - the empty playbook's wall) / N, as in section 1b (bench/floor.py). The
figure is the median over the rounds [min-max]; in a round the variants take turns.

In process, the module's own work (open_queues + queue_states, as celery_queue_info does it) is timed INPROCESS
times each way, alternating: the difference is the Sentinel resolution alone, without Ansible's noise.

An untimed warm-up round checks every task of both playbooks (QUEUES queues, QUEUES x MESSAGES ready messages),
and the in-process result through Sentinel names the master's port and the Sentinel that answered. Runs after
bench/report.py, like sections 7 and 8, and writes its own section into the report (BENCH_RESULTS, else
bench/RESULTS.md). Only the linear strategy.
"""

import os
import shutil
import signal
import sys
import tempfile
import time

import lib

sys.path.insert(0, os.path.join(lib.ROOT, 'tests', 'integration'))

N_TASKS = 10  # the tasks of bench/playbooks/per_task_sentinel.yml (a YAML anchor and aliases)
QUEUES = 10
MESSAGES = 200 if lib.QUICK else 1000
ROUNDS = int(os.environ.get('BENCH_SENTINEL_ROUNDS') or (3 if lib.QUICK else 5))
INPROCESS = 10 if lib.QUICK else 30
SECTION = '## 9. celery_queue_info through Redis Sentinel vs direct to the master'
PLAYBOOK = 'per_task_sentinel.yml'


def loadavg():
    with open('/proc/loadavg') as handle:
        return ' '.join(handle.read().split()[:3])


def queue_names():
    return ['bench.sentinel.%d' % index for index in range(QUEUES)]


def variants(found):
    """(name, playbook, extra vars) of each variant: the empty baseline, through Sentinel, direct."""
    names = queue_names()
    direct = 'redis://:%s@127.0.0.1:%d/0' % (found.password, found.master_port())
    return [
        ('empty', 'per_task_empty.yml', None),
        ('sentinel', PLAYBOOK, dict(broker_url=found.url(), master_name=found.master_name,
                                    sentinel_password=found.sentinel_password, queues=names)),
        ('direct', PLAYBOOK, dict(broker_url=direct, queues=names)),
    ]


def shown(command, found):
    """A command as the report shows it: the set's passwords (random, of this run) as ***."""
    return command.replace(found.password, '***').replace(found.sentinel_password, '***')


def run_wall(playbook, extra):
    """One timed ansible-playbook run without our callback: wall seconds; checks that N tasks were ok."""
    seconds, out = lib.timed(lib.playbook_argv(playbook, extra))
    text = out.decode('utf-8', 'replace')
    if playbook != 'per_task_empty.yml' and ('ok=%d ' % N_TASKS not in text or 'failed=0' not in text):
        raise RuntimeError('%s: the recap does not say ok=%d failed=0: %s' % (playbook, N_TASKS, text[-600:]))
    return seconds


def inprocess(found, master):
    """open_queues + queue_states each way, alternating: {variant: summary of seconds}; checks what each saw."""
    names = queue_names()
    params = dict(sentinel=lib.module_params(found.url(), master_name=found.master_name,
                                             sentinel_password=found.sentinel_password, queues=names),
                  direct=lib.module_params('redis://:%s@127.0.0.1:%d/0' % (found.password, master), queues=names))
    _queues = lib.module_utils()
    # What the module reports through Sentinel: the master's port, the Sentinel that answered.
    queues = _queues.open_queues(params['sentinel'])
    try:
        facts = queues.broker.facts()
    finally:
        queues.close()
    if facts['port'] != master or facts['sentinel']['answered'] not in facts['sentinel']['sentinels']:
        raise AssertionError('through Sentinel the module reports %r, the master is on port %d' % (facts, master))
    seconds = dict((name, []) for name in params)
    for _run in range(INPROCESS):
        for name, values in params.items():
            elapsed, states = lib.describe_in_process(dict(values))
            if sum(s['messages'] for s in states) != QUEUES * MESSAGES:
                raise AssertionError('%s in process saw %r' % (name, states))
            seconds[name].append(elapsed)
    return dict((name, lib.summary(values)) for name, values in seconds.items())


def bench(found):
    client = found.master_client()
    envelopes = lib.Envelopes()
    for name in queue_names():
        lib.fill_backlog(client, envelopes, name, MESSAGES, step_share=0, seed=1)
    client.wait(1, 10000)
    master = found.master_port()
    chosen = variants(found)
    expected = (QUEUES, QUEUES * MESSAGES)
    loads = [loadavg()]
    warmup = {}
    for name, playbook, extra in chosen:
        if name == 'empty':
            continue
        _seconds, tasks = lib.run_playbook_tasks(playbook, extra)
        got = [(task['summary'].get('queues'), task['summary'].get('messages')) for task in tasks]
        if got != [expected] * N_TASKS:
            raise AssertionError('%s: the tasks saw %r, expected %d times %r' % (name, got, N_TASKS, expected))
        warmup[name] = dict(first=tasks[0]['seconds'], later=lib.summary(task['seconds'] for task in tasks[1:]))
    calls = inprocess(found, master)
    walls = dict((name, []) for name, _p, _e in chosen)
    for round_ in range(ROUNDS):
        for name, playbook, extra in chosen:
            walls[name].append(run_wall(playbook, extra))
        loads.append(loadavg())
        lib.log('sentinel round %d/%d: %s (load %s)' % (round_ + 1, ROUNDS, ', '.join(
            '%s %.2fs' % (name, values[-1]) for name, values in walls.items()), loads[-1]))
    if found.master_port() != master:
        raise AssertionError('the master moved during the bench (a failover): the figures mix two masters')
    out = dict(queues=QUEUES, messages=MESSAGES, n_tasks=N_TASKS, rounds=ROUNDS, inprocess_runs=INPROCESS,
               sentinels=len(found.sentinels), replicas=found.replica_count, loads=loads, warmup=warmup,
               inprocess=calls, when=time.strftime('%Y-%m-%d %H:%M', time.gmtime()), variants={}, commands={})
    empty = walls['empty']
    for name, playbook, extra in chosen:
        entry = dict(wall=lib.summary(walls[name]))
        if name != 'empty':
            entry['per_task'] = lib.summary((w - e) / N_TASKS for w, e in zip(walls[name], empty))
            out['commands'][name] = shown(lib.show(lib.playbook_argv(playbook, extra)), found)
        out['variants'][name] = entry
    return out


def render(d):
    v = d['variants']

    def s(summary, unit=1.0, fmt='%.3f'):
        return ('%s s [%s–%s]' % (fmt, fmt, fmt)) % (summary['median'] * unit, summary['min'] * unit,
                                                     summary['max'] * unit)
    extra_task = v['sentinel']['per_task']['median'] - v['direct']['per_task']['median']
    extra_inprocess = d['inprocess']['sentinel']['median'] - d['inprocess']['direct']['median']
    lines = [SECTION, '',
             'Written by `bench/sentinel.py` on %s (UTC); load average %s before the first round, %s after the last '
             '(other sessions share the machine: read the figures with it). A private Sentinel set started by the '
             'bench (tests/integration/private_brokers.py\'s PrivateSentinelSet: a master, %d replica and %d '
             'Sentinels, with passwords, on loopback; stopped by pid at the end) holds %d queues of %s real Celery '
             'envelopes each. The same playbook of %d identical celery_queue_info tasks over those queues runs through '
             'Sentinel (`sentinel://` URLs of the %d Sentinels, `master_name`, `sentinel_password`) and with '
             '`redis://` to the master they name; per round, a variant\'s cost per task is (its wall - the empty '
             'playbook\'s wall) / %d, as in section 1b. Median [min–max] of %d rounds, the variants taking turns; '
             'the `linear` strategy.'
             % (d['when'], d['loads'][0], d['loads'][-1], d['replicas'], d['sentinels'], d['queues'],
                format(d['messages'], ','), d['n_tasks'], d['sentinels'], d['n_tasks'], d['rounds']), '',
             'Checked: every task of an untimed warm-up run of each playbook saw the %d queues and their %s ready '
             'messages; through Sentinel the module reports the master\'s port and the Sentinel that answered.'
             % (d['queues'], format(d['queues'] * d['messages'], ',')), '',
             '| variant | playbook wall | per task | command |', '|---|---|---|---|',
             '| empty playbook | %s | – | `ansible-playbook -i localhost, -c local bench/playbooks/per_task_empty.yml` |'
             % s(v['empty']['wall'], fmt='%.2f')]
    for name, label in (('sentinel', 'through Sentinel'), ('direct', 'direct to the master')):
        lines.append('| celery_queue_info, %s | %s | %s | `%s` |' % (
            label, s(v[name]['wall'], fmt='%.2f'), s(v[name]['per_task']), d['commands'][name]))
    lines += ['', '| in process (open_queues + queue_states, %d runs each, alternating) | time |' % d['inprocess_runs'],
              '|---|---|',
              '| through Sentinel | %s |' % s(d['inprocess']['sentinel'], unit=1000.0, fmt='%.1f').replace(' s ', ' ms '),
              '| direct to the master | %s |' % s(d['inprocess']['direct'], unit=1000.0, fmt='%.1f').replace(' s ', ' ms '),
              '',
              '- Per task, through Sentinel costs %.3f s %s than direct (%.3f s vs %.3f s, medians); in process the '
              'difference is %.1f ms, the Sentinel resolution itself (redis-py\'s Sentinel asks the first Sentinel for '
              'the master and checks its state, then the module connects to the master). %s' % (
                  abs(extra_task), 'more' if extra_task >= 0 else 'less', v['sentinel']['per_task']['median'],
                  v['direct']['per_task']['median'], extra_inprocess * 1000.0,
                  'A per-task difference smaller than the spread of the rounds is noise: the resolution is a few '
                  'loopback round trips, small beside the task\'s own cost.'
                  if abs(extra_task) < (v['direct']['per_task']['max'] - v['direct']['per_task']['min'])
                  else 'The difference is larger than the spread of the direct rounds.'),
              '- Warm-up run, per task (bench_timer callback): through Sentinel first %.2f s, later %.3f s (median); '
              'direct first %.2f s, later %.3f s.' % (
                  d['warmup']['sentinel']['first'], d['warmup']['sentinel']['later']['median'],
                  d['warmup']['direct']['first'], d['warmup']['direct']['later']['median']), '']
    return '\n'.join(lines)


def main():
    # SIGTERM ends the run through the finally clauses, which stop the Sentinel set.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    import private_brokers
    directory = tempfile.mkdtemp(prefix='sentinel-', dir=lib.OUT)
    found = private_brokers.PrivateSentinelSet(os.path.join(directory, 'set'))
    try:
        found.start()
        data = bench(found)
    finally:
        found.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
    lib.write_result('sentinel', data)
    lib.write_section(SECTION, render(data))


if __name__ == '__main__':
    main()
