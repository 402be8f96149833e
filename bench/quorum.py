"""10. celery_queue_info on RabbitMQ quorum queues vs classic queues.

On the bench's vhost (lib.VHOST) QUEUES classic and QUEUES quorum queues (x-queue-type quorum, durable) hold MESSAGES
real Celery envelopes each (lib.AmqpEnvelopes). The same playbook of N identical celery_queue_info tasks
(bench/playbooks/per_task_sentinel.yml: broker_url and queues) runs over the classic queues and over the quorum ones,
with the empty playbook as the baseline: per round, a variant's cost per task is (its wall - the empty playbook's
wall) / N, as in section 1b. The figure is the median over the rounds [min-max]; in a round the variants take turns.
In process, open_queues + queue_states over each set is timed INPROCESS times, alternating.

An untimed warm-up round checks every task (QUEUES queues, QUEUES x MESSAGES ready messages, each queue's type).
Runs after bench/report.py, like sections 7 to 9, and writes its own section into the report (BENCH_RESULTS, else
bench/RESULTS.md). Only the linear strategy. The queues are deleted with the vhost at the end (bench/lib.py cleanup).
"""

import random
import time

import lib

N_TASKS = 10  # the tasks of bench/playbooks/per_task_sentinel.yml
QUEUES = 10
MESSAGES = 200 if lib.QUICK else 1000
ROUNDS = 3 if lib.QUICK else 5
INPROCESS = 10 if lib.QUICK else 30
SECTION = '## 10. celery_queue_info on RabbitMQ quorum queues vs classic queues'
PLAYBOOK = 'per_task_sentinel.yml'
KINDS = ('classic', 'quorum')


def loadavg():
    with open('/proc/loadavg') as handle:
        return ' '.join(handle.read().split()[:3])


def names(kind):
    return ['bench.%s.%d' % (kind, index) for index in range(QUEUES)]


def fill():
    envelopes = lib.AmqpEnvelopes()
    connection = lib.amqp_connection()
    try:
        channel = connection.channel()
        rnd = random.Random(1)
        for kind in KINDS:
            for name in names(kind):
                arguments = dict(envelopes.queue_arguments or {})
                if kind == 'quorum':
                    arguments = {'x-queue-type': 'quorum'}   # a quorum queue takes no x-max-priority
                channel.queue_declare(name, durable=True, arguments=arguments)
                envelopes.fill(connection, channel, name, MESSAGES, rnd)
    finally:
        connection.close()
    for kind in KINDS:
        for name in names(kind):
            lib.wait_ready(name, MESSAGES)


def describe(kind):
    """open_queues + queue_states over the queues of ``kind``, as celery_queue_info does it: (seconds, states)."""
    _queues = lib.module_utils()
    start = time.perf_counter()
    queues = _queues.open_queues(lib.module_params(lib.AMQP_URL, queues=names(kind)))
    try:
        states = _queues.queue_states(queues, names(kind))
    finally:
        queues.close()
    return time.perf_counter() - start, states


def inprocess():
    """Each set INPROCESS times, alternating; every run checks the counts and each queue's type."""
    seconds = dict((kind, []) for kind in KINDS)
    for _run in range(INPROCESS):
        for kind in KINDS:
            elapsed, states = describe(kind)
            got = sorted((q['name'], q['messages'], q.get('type')) for q in states)
            if got != sorted((name, MESSAGES, kind) for name in names(kind)):
                raise AssertionError('%s in process saw %r' % (kind, got))
            seconds[kind].append(elapsed)
    return dict((kind, lib.summary(values)) for kind, values in seconds.items())


def bench():
    fill()
    chosen = [('empty', 'per_task_empty.yml', None)] + [
        (kind, PLAYBOOK, dict(broker_url=lib.AMQP_URL, queues=names(kind))) for kind in KINDS]
    loads = [loadavg()]
    warmup = {}
    for name, playbook, extra in chosen[1:]:
        _seconds, tasks = lib.run_playbook_tasks(playbook, extra)
        got = [(task['summary'].get('queues'), task['summary'].get('messages')) for task in tasks]
        if got != [(QUEUES, QUEUES * MESSAGES)] * N_TASKS:
            raise AssertionError('%s: the tasks saw %r' % (name, got))
        warmup[name] = dict(first=tasks[0]['seconds'], later=lib.summary(task['seconds'] for task in tasks[1:]))
    calls = inprocess()
    walls = dict((name, []) for name, _p, _e in chosen)
    for round_ in range(ROUNDS):
        for name, playbook, extra in chosen:
            seconds, out = lib.timed(lib.playbook_argv(playbook, extra))
            if playbook != 'per_task_empty.yml' and 'ok=%d ' % N_TASKS not in out.decode('utf-8', 'replace'):
                raise RuntimeError('%s: not %d tasks ok: %s' % (name, N_TASKS, out[-600:]))
            walls[name].append(seconds)
        loads.append(loadavg())
        lib.log('quorum round %d/%d: %s (load %s)' % (round_ + 1, ROUNDS, ', '.join(
            '%s %.2fs' % (name, values[-1]) for name, values in walls.items()), loads[-1]))
    out = dict(queues=QUEUES, messages=MESSAGES, n_tasks=N_TASKS, rounds=ROUNDS, inprocess_runs=INPROCESS, loads=loads,
               warmup=warmup, inprocess=calls, when=time.strftime('%Y-%m-%d %H:%M', time.gmtime()), variants={},
               commands={})
    for name, playbook, extra in chosen:
        entry = dict(wall=lib.summary(walls[name]))
        if name != 'empty':
            entry['per_task'] = lib.summary((w - e) / N_TASKS for w, e in zip(walls[name], walls['empty']))
            out['commands'][name] = lib.show(lib.playbook_argv(playbook, extra))
        out['variants'][name] = entry
    return out


def render(d):
    v = d['variants']

    def s(summary, unit=1.0, fmt='%.3f', suffix='s'):
        shown = '%s %s [%s–%s]' % (fmt, suffix, fmt, fmt)
        return shown % (summary['median'] * unit, summary['min'] * unit, summary['max'] * unit)
    extra_task = v['quorum']['per_task']['median'] - v['classic']['per_task']['median']
    extra_inprocess = d['inprocess']['quorum']['median'] - d['inprocess']['classic']['median']
    lines = [SECTION, '',
             'Written by `bench/quorum.py` on %s (UTC); load average %s before the first round, %s after the last. On '
             'the bench\'s RabbitMQ vhost, %d classic and %d quorum queues hold %s real Celery envelopes each. The same '
             'playbook of %d identical celery_queue_info tasks (`bench/playbooks/per_task_sentinel.yml`) describes '
             'the classic queues, then the quorum ones; per round, a variant\'s cost per task is (its wall - the '
             'empty playbook\'s wall) / %d, as in section 1b. Median [min–max] of %d rounds, the variants taking turns; '
             'the `linear` strategy. Checked: every task of an untimed warm-up run saw the %d queues and their %s '
             'ready messages, and each queue\'s `type`.'
             % (d['when'], d['loads'][0], d['loads'][-1], d['queues'], d['queues'], format(d['messages'], ','),
                d['n_tasks'], d['n_tasks'], d['rounds'], d['queues'], format(d['queues'] * d['messages'], ',')), '',
             '| variant | playbook wall | per task | command |', '|---|---|---|---|',
             '| empty playbook | %s | – | `ansible-playbook -i localhost, -c local bench/playbooks/per_task_empty.yml` |'
             % s(v['empty']['wall'], fmt='%.2f')]
    for name in KINDS:
        lines.append('| celery_queue_info, %d %s queues | %s | %s | `%s` |' % (
            d['queues'], name, s(v[name]['wall'], fmt='%.2f'), s(v[name]['per_task']), d['commands'][name]))
    lines += ['', '| in process (open_queues + queue_states, %d runs each, alternating) | time |' % d['inprocess_runs'],
              '|---|---|']
    lines += ['| %s queues | %s |' % (name, s(d['inprocess'][name], unit=1000.0, fmt='%.1f', suffix='ms'))
              for name in KINDS]
    lines += ['', '- Per task, the quorum queues cost %.3f s %s than the classic ones (medians); in process the '
              'difference is %.1f ms. The module reads both the same way (a passive declare per queue for the ready '
              'count and consumers, one management API listing for unacked counts and types); a quorum queue adds its '
              'leader, members, delivery limit and dead-lettering from that same listing, and no read of its messages.'
              % (abs(extra_task), 'more' if extra_task >= 0 else 'less', extra_inprocess * 1000.0), '']
    return '\n'.join(lines)


def main():
    data = bench()
    lib.write_result('quorum', data)
    lib.write_section(SECTION, render(data))


if __name__ == '__main__':
    main()
