"""Write bench/RESULTS.md from the JSON files the benchmark scripts left in $BENCH_OUT.

One function per section of RESULTS.md; each returns its lines, and the sections that measure something against a
target add their rows to the Targets table. The targets themselves are the data table TARGETS below."""

import collections
import datetime
import json
import os
import platform
import sys
import time

import lib

SECTIONS = ('redis_info', 'floor', 'amqp_info', 'purge', 'breakdown', 'checks', 'worker_info')


class Target(collections.namedtuple('Target', 'section, limit, figure, at_most, strict', defaults=(False,))):
    """A performance target of a section: a measured value meets it when at most `limit` (at least, when `at_most`
    is false; below or above it, when `strict`). `figure` is the limit as RESULTS.md writes it."""

    @property
    def shown(self):
        if self.strict:
            return ('< ' if self.at_most else '> ') + self.figure
        return ('≤ ' if self.at_most else '≥ ') + self.figure

    def met(self, value):
        if self.strict:
            return value < self.limit if self.at_most else value > self.limit
        return value <= self.limit if self.at_most else value >= self.limit


# The performance targets, one row each: section, limit, as written, ceiling (else floor); and what is measured.
QUEUE_INFO = Target('1', 1.5, '1.5×', True)                  # celery_queue_info task / ping task (Redis)
BREAKDOWN_RATE = Target('4', 300000, '300k msgs/s', False)   # breakdown throughput, messages per second
LONGEST_COMMAND = Target('4', 50, '50 ms', True)             # longest single Redis command during breakdown
WORKER_INFO_WALL = Target('6', 0.25, '0.25×', True)          # celery_worker_info playbook wall / celery CLI wall
WORKER_INFO_TASK = Target('6', 0.3, '0.3 s', True)           # celery_worker_info task − ping task, same playbook
# 1b, per task (N tasks in a playbook, minus the empty playbook), 1,000 Redis queues:
MITOGEN_OVER_LINEAR_PING = Target('1b', 1.0, '1.0×', True)   # celery_queue_info under mitogen_linear / ping under linear
MITOGEN_OVER_MITOGEN_PING = Target('1b', 1.6, '1.6×', True)  # celery_queue_info / ping, both under mitogen_linear
MODULE_SHARE = Target('1b', 0.1, '0.1 s', True, True)        # celery_queue_info − the floor with redis-py, per strategy


def load(name):
    path = os.path.join(lib.OUT, name + '.json')
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def spread(summary, unit='s', digits=2):
    """median [min–max] of a summary."""
    if not summary:
        return 'n/a'
    scale = 1000.0 if unit == 'ms' else 1.0
    return '%.*f %s [%.*f–%.*f]' % (digits, summary['median'] * scale, unit, digits, summary['min'] * scale, digits,
                                    summary['max'] * scale)


def ratio(numerator, denominator):
    return numerator['median'] / denominator['median']


def mark(ok):
    return '**met**' if ok else '**not met**'


def plain_mark(ok):
    """As mark(), for a figure that only informs."""
    return 'met' if ok else 'not met'


def rate(count, summary):
    """messages/s from the median, and the range from the slowest and fastest runs."""
    return '%.0fk msgs/s [%.0fk–%.0fk]' % (
        count / summary['median'] / 1000, count / summary['max'] / 1000, count / summary['min'] / 1000)


def thousands(number):
    return '{:,}'.format(number)


def not_measured(target, comparison):
    """The Targets row of a target whose section has no data."""
    return (target.section, comparison, 'n/a', target.shown, '**not measured**')


def versions():
    out = {}
    try:
        from importlib import metadata
        for dist in ('ansible-core', 'redis', 'hiredis', 'pika', 'celery', 'kombu', 'mitogen'):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                out[dist] = 'absent'
    except ImportError:
        pass
    out['python'] = platform.python_version()
    try:
        out['redis-server'] = lib.redis_client().info('server')['redis_version']
    except Exception:  # noqa: BLE001 - a version is a nicety
        out['redis-server'] = '?'
    try:
        out['rabbitmq'] = lib.management('GET', '/api/overview').get('rabbitmq_version', '?')
    except Exception:  # noqa: BLE001
        out['rabbitmq'] = '?'
    return out


def machine():
    model = '?'
    try:
        with open('/proc/cpuinfo') as handle:
            for line in handle:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    memory = '?'
    try:
        with open('/proc/meminfo') as handle:
            memory = '%.0f GB RAM' % (int(handle.readline().split()[1]) / 1024.0 / 1024.0)
    except (OSError, ValueError, IndexError):
        pass
    return '%d cores (%s), %s' % (os.cpu_count() or 0, model, memory)


def python_speed():
    """Seconds for 10,000,000 additions in a Python loop, best of 3: how fast this machine runs
    Python, to set runs on different machines side by side (the absolute targets scale with it)."""
    best = None
    for _run in range(3):
        started = time.perf_counter()
        total = 0
        for number in range(10000000):
            total += number
        spent = time.perf_counter() - started
        best = spent if best is None else min(best, spent)
    return best


def header(data, elapsed):
    """Title, machine, software and how the figures were taken."""
    found = versions()
    worker_info = data['worker_info']
    return [
        '# Benchmarks of celeryops.fleet',
        '',
        'Written by `%s` on %s (UTC); the run took %.0f s. **Do not edit: rerun it.**' % (
            'BENCH_QUICK=1 bench/run' if lib.QUICK else 'bench/run',
            datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M'), elapsed),
        '',
        '- Machine: %s; Linux %s; a Python loop of 10,000,000 additions takes %.2f s (best of 3, after the run). '
        'Load average at the start %s, at the end %s (other sessions may share the machine and the brokers).' % (
            machine(), platform.release(), python_speed(), os.environ.get('BENCH_LOAD_START', '?'),
            '%.2f %.2f %.2f' % os.getloadavg()),
        '- Software: Python %s, ansible-core %s, redis-py %s + hiredis %s, pika %s, celery %s / kombu %s, '
        'mitogen %s; Redis %s, RabbitMQ %s, all on loopback.' % (
            found.get('python'), found.get('ansible-core'), found.get('redis'), found.get('hiredis'), found.get('pika'),
            found.get('celery'), found.get('kombu'), found.get('mitogen'), found.get('redis-server'),
            found.get('rabbitmq')),
        '- Every figure is the **median of %d runs [min–max]**%s%s; a ratio is of medians. Variants take turns '
        'within each round, on the same data.' % (
            lib.REPEAT, ' (quick mode: smaller data)' if lib.QUICK else '',
            ''.join(note for note in (
                ' (section 1b: of %d rounds, per-task figures are differences)' % data['floor']['rounds']
                if data.get('floor') and data['floor']['rounds'] != lib.REPEAT else '',
                ' (section 6: of %d runs, its rounds are long)' % worker_info['rounds']
                if worker_info and worker_info['rounds'] != lib.REPEAT else ''))),
        '- Brokers: Redis db %d and RabbitMQ vhost `%s`, both emptied/deleted afterwards.' % (lib.REDIS_DB, lib.VHOST),
        '- **wall** = the whole `ansible-playbook` process; **task** = the one task, from its start to its result '
        'on the controller (the span `ansible.posix.profile_tasks` reports), by the callback '
        '`bench/callback_plugins/bench_timer.py`. Every playbook run uses `-i localhost, -c local` and '
        '`gather_facts: false`, with `ANSIBLE_PYTHON_INTERPRETER` set to the venv (bench/run does it). '
        'Run commands from the repository root after `source scripts/bootstrap.sh && place_collection`.',
        '',
    ]


def redis_queue_info(redis, targets):
    """1. celery_queue_info over many Redis queues, against ping, a shell loop of redis-cli and the floors."""
    lines = ['## 1. celery_queue_info over %s Redis queues' % (thousands(redis['n_queues']) if redis else 'N'), '']
    add = lines.append
    if not redis:
        add('Not measured: bench/redis_info.py failed (see the output of bench/run).')
        targets.append(not_measured(QUEUE_INFO, 'celery_queue_info task vs ping task (Redis)'))
        return lines
    variants = redis['variants']
    add('%d queues in kombu\'s layout: %d ready messages in all (3 per queue on the bare key, 1 more on '
        'priority step 3 in every 5th queue), kombu\'s `_kombu.binding.<q>` and `_kombu.binding_permanent.<q>` '
        'sets (members written exactly as kombu 5.7 wrote them for a probe queue, checked), and %d messages '
        'held in `unacked`. Envelopes are copies, with fresh ids, of messages Celery itself published. '
        'celery_queue_info discovers the queues (no `queues:` given) and reads all 4 priority keys of each.'
        % (redis['n_queues'], redis['ready'], redis['unacked']))
    add('')
    add('| variant | wall | task | command |')
    add('|---|---|---|---|')
    add('| ansible.builtin.ping | %s | %s | `%s` |' % (
        spread(variants['ping']['wall']), spread(variants['ping']['task']), variants['ping']['command']))
    add('| celery_queue_info, one task | %s | %s | `%s` |' % (
        spread(variants['queue_info']['wall']), spread(variants['queue_info']['task']),
        variants['queue_info']['command']))
    if 'queue_info_one' in variants:
        one = variants['queue_info_one']
        add('| celery_queue_info, one queue named (`queues: [bench.q0000]`): the fixed cost | %s | %s | `%s` |' % (
            spread(one['wall']), spread(one['task']), one['command']))
    floors = (('floor', 'the floor: a bench-only module returning the result celery_queue_info printed, no broker '
               'work, no imports beyond ping\'s (bench/playbooks/library/bench_result_floor.py)'),
              ('floor_redis', 'the same floor, importing redis-py first as any Redis queue module must'))
    for name, label in floors:
        if name in variants:
            add('| %s | %s | %s | `%s` |' % (
                label, spread(variants[name]['wall']), spread(variants[name]['task']), variants[name]['command']))
    add('| shell loop, one `redis-cli llen` per queue (%s) | %s | %s | `%s` |' % (
        'bare key only' if redis['loop_keys'] == 'base' else 'all 4 priority keys',
        spread(variants['llen_loop']['wall']), spread(variants['llen_loop']['task']), variants['llen_loop']['command']))
    add('| one `redis-cli` reading %d `LLEN` (4 keys per queue) on stdin, no Ansible | %s | – | `%s` |' % (
        4 * redis['n_queues'], spread(variants['redis_cli_stdin']['wall'], 'ms', 1),
        variants['redis_cli_stdin']['command']))
    add('| the module\'s code in process (connect, discover, counts, unacked), no Ansible | %s | – | %s |' % (
        spread(variants['module_utils']['wall'], 'ms', 1), variants['module_utils']['command']))
    add('')
    task_ratio = ratio(variants['queue_info']['task'], variants['ping']['task'])
    wall_ratio = ratio(variants['queue_info']['wall'], variants['ping']['wall'])
    loop_task_ratio = ratio(variants['llen_loop']['task'], variants['queue_info']['task'])
    loop_wall_ratio = ratio(variants['llen_loop']['wall'], variants['queue_info']['wall'])
    add('| ratio | value | target |')
    add('|---|---|---|')
    add('| celery_queue_info task / ping task | **%.2f×** | %s: %s |' % (
        task_ratio, QUEUE_INFO.shown, mark(QUEUE_INFO.met(task_ratio))))
    add('| celery_queue_info wall / ping wall | %.2f× | (%s: %s) |' % (
        wall_ratio, QUEUE_INFO.shown, plain_mark(QUEUE_INFO.met(wall_ratio))))
    add('| shell loop task / celery_queue_info task | %.2f× (the module is %.1f× faster) | – |' % (
        loop_task_ratio, loop_task_ratio))
    add('| shell loop wall / celery_queue_info wall | %.2f× | – |' % loop_wall_ratio)
    if 'queue_info_one' in variants:
        one_ratio = ratio(variants['queue_info_one']['task'], variants['ping']['task'])
        add('| celery_queue_info on one queue: task / ping task | %.2f× | %s: %s even for one queue |' % (
            one_ratio, QUEUE_INFO.shown, plain_mark(QUEUE_INFO.met(one_ratio))))
    floor_redis_ratio = None
    if 'floor_redis' in variants:
        floor_redis_ratio = ratio(variants['floor_redis']['task'], variants['ping']['task'])
        floor_ratio = ratio(variants['floor']['task'], variants['ping']['task'])
        add('| floor task / ping task: Ansible\'s cost for this result alone | %.2f× | – |' % floor_ratio)
        add('| floor with redis-py task / ping task: the least any module returning this result over redis-py '
            'can take | **%.2f×** | %s: %s |' % (
                floor_redis_ratio, QUEUE_INFO.shown, plain_mark(QUEUE_INFO.met(floor_redis_ratio))))
        add('| celery_queue_info task − floor with redis-py task: the module\'s own share | %.2f s | – |' % (
            variants['queue_info']['task']['median'] - variants['floor_redis']['task']['median']))
    add('| celery_queue_info task − ping task | %.2f s, of which the module\'s broker work is %.3f s |  – |' % (
        variants['queue_info']['task']['median'] - variants['ping']['task']['median'],
        variants['module_utils']['wall']['median']))
    add('')
    lines.extend(module_main_calls(redis))
    if redis['loop_keys'] == 'base':
        add('The shell loop reads only the bare key of each queue (what celery-exporter counts), a quarter of '
            'the keys the module reads; `BENCH_LOOP_KEYS=all bench/run` makes it read all four (≈4× longer).')
        add('')
    floor_note = ('; the floor under any module returning this result over redis-py: %.2f×'
                  % floor_redis_ratio) if floor_redis_ratio is not None else ''
    targets.append((QUEUE_INFO.section, 'celery_queue_info task / ping task, %d Redis queues' % redis['n_queues'],
                    '%.2f× (wall %.2f×%s)' % (task_ratio, wall_ratio, floor_note), QUEUE_INFO.shown,
                    mark(QUEUE_INFO.met(task_ratio))))
    return lines


def module_main_calls(redis):
    """Part of 1: the calls timed inside celery_queue_info's main(), when measured."""
    calls = redis.get('module_main')
    if not calls:
        return []
    lines = ['celery_queue_info\'s `main()` run once in process as AnsiballZ runs it (ansible-core\'s parameter '
             'hand-over), over the same %d queues, with these calls timed (nested: discover() calls bindings()):'
             % redis['n_queues'], '', '| call | calls | time |', '|---|---|---|']
    for label in ('main() in all', 'RedisQueues.discover', 'RedisQueues.bindings', 'RedisQueues.depths',
                  'RedisQueues.unacked_by_queue', 'AnsibleModule.exit_json (no_log scrubbing, JSON out)'):
        if label in calls:
            lines.append('| %s | %d | %.0f ms |' % (label, calls[label][0], calls[label][1] * 1000))
    if 'result bytes' in calls:
        lines.append('| (result printed) | – | %.0f kB |' % (calls['result bytes'][1] / 1000.0))
    lines.append('')
    return lines


FLOOR_CALLS = (
    ('main() in all', 'main() in all'),
    ('RedisQueues.bindings', 'RedisQueues.bindings'),
    ('RedisQueues.depths', 'RedisQueues.depths'),
    ('RedisQueues.unacked_by_queue', 'RedisQueues.unacked_by_queue'),
    ('AnsibleModule.exit_json (no_log scrubbing, JSON out)', 'AnsibleModule.exit_json'),
    ('remove_values (the no_log scrub, in exit_json)', '… of which remove_values (the no_log scrub)'),
    ('JSON encoding and printing (in exit_json)', '… of which JSON encoding and printing'),
)


def floor_inprocess(floor):
    """Part of 1b: celery_queue_info's main() in process, its default against priorities=all."""
    calls = floor.get('inprocess') or {}
    default, every = calls.get('default'), calls.get('all')
    if not default or not every:
        return []
    lines = ['celery_queue_info\'s `main()` in process as AnsiballZ runs it (bench/redis_info.py, '
             '`module_main_inprocess`), %d runs each, median [min–max]: with the default `priorities` (auto: the '
             'queues are discovered, so only queues with messages on a priority step other than 0 get their map) '
             'and with `priorities: all` (every queue its map, as the module returned before):' % (
                 default['main() in all']['seconds']['n']),
             '', '| call | default | priorities: all |', '|---|---|---|']
    for key, label in FLOOR_CALLS:
        if key in default and key in every:
            lines.append('| %s | %s | %s |' % (label, spread(default[key]['seconds'], 'ms', 0),
                                               spread(every[key]['seconds'], 'ms', 0)))
    for key, label, scale, unit in (('result bytes', 'result printed', 1000.0, 'kB'),
                                    ('result values', 'values in the result (each one remove_values walks)', 1, '')):
        if key in default and key in every:
            lines.append('| %s | %s%s | %s%s |' % (
                label, ('%.0f ' % (default[key]['seconds']['median'] / scale)) if unit else
                thousands(int(default[key]['seconds']['median'])), unit,
                ('%.0f ' % (every[key]['seconds']['median'] / scale)) if unit else
                thousands(int(every[key]['seconds']['median'])), unit))
    lines.append('')
    return lines


def per_task_floor(floor, targets):
    """1b. Per task (N tasks in one playbook, minus the empty playbook): ping, celery_queue_info and its floor, under
    linear and mitogen_linear."""
    title = '## 1b. Per task: ping and celery_queue_info over %s Redis queues, under linear and mitogen_linear' % (
        thousands(floor['n_queues']) if floor else 'N')
    lines = [title, '']
    add = lines.append
    if not floor:
        add('Not measured: bench/floor.py failed (see the output of bench/run).')
        for target, comparison in ((MITOGEN_OVER_LINEAR_PING, 'celery_queue_info task (mitogen_linear) / ping task '
                                    '(linear)'),
                                   (MITOGEN_OVER_MITOGEN_PING, 'celery_queue_info task / ping task, mitogen_linear'),
                                   (MODULE_SHARE, 'celery_queue_info task − floor with redis-py task')):
            targets.append(not_measured(target, comparison))
        return lines
    variants = floor['variants']
    strategies = floor['strategies']
    mitogen = 'mitogen_linear' in strategies
    add('Section 1\'s data (%d queues, %d ready messages, %d unacked), celery_queue_info discovering them. Each '
        'variant is a playbook of **%d identical tasks** (`bench/playbooks/per_task_*.yml`); its cost **per task** '
        'is (its wall − the wall of the empty playbook `per_task_empty.yml` in the same round, same strategy) / %d, '
        'median of %d rounds [min–max]; within a round the variants take turns, `linear` then `mitogen_linear`. '
        'Timed runs use no callback of ours (an untimed warm-up run of each, with the bench_timer callback, checked '
        'every task: %d queues, %d ready, %d unacked). Run on ansible-core %s, Python %s, %s; load average %s at '
        'the end of the section.' % (
            floor['n_queues'], floor['ready'], floor['unacked'], floor['n_tasks'], floor['n_tasks'], floor['rounds'],
            floor['n_queues'], floor['ready'], floor['unacked'], floor['ansible_core'], floor['python'],
            ('mitogen %s' % floor['mitogen']) if mitogen else
            '**no Mitogen** (ansible_mitogen does not import in the virtualenv: requirements-dev.txt)',
            floor['load_end']))
    add('')
    add('The floor: the bench-only module `bench/playbooks/library/bench_result_floor.py` returns the result '
        'celery_queue_info printed (its default, recorded in process first: %.0f kB; with `priorities: all` '
        '%.0f kB) after importing redis-py, with no broker work: what Ansible charges for that result plus '
        'redis-py\'s import. celery_queue_info\'s task minus it is the module\'s own share.' % (
            (floor['result_bytes'].get('queue_info') or 0) / 1000.0,
            (floor['result_bytes'].get('queue_info_all') or 0) / 1000.0))
    add('')
    labels = (('ping', 'ansible.builtin.ping'),
              ('queue_info', 'celery_queue_info, default `priorities` (auto)'),
              ('queue_info_all', 'celery_queue_info, `priorities: all`'),
              ('floor_redis', 'the floor with redis-py (same result as the default)'),
              ('empty', 'the empty playbook'))
    add('| strategy | variant | per task | playbook wall | command |')
    add('|---|---|---|---|---|')
    for strategy in strategies:
        prefix = 'ANSIBLE_STRATEGY=linear ' if strategy == 'linear' else floor['mitogen_env'] + ' '
        for name, label in labels:
            entry = variants.get('%s/%s' % (strategy, name))
            if entry:
                add('| %s | %s | %s | %s | `%s%s` |' % (
                    strategy, label, spread(entry['per_task'], 'ms', 0) if 'per_task' in entry else '–',
                    spread(entry['wall']), prefix, floor['commands'][name]))
    add('')

    def per_task(strategy, name):
        return variants['%s/%s' % (strategy, name)]['per_task']['median']

    add('| ratio / figure | value | target |')
    add('|---|---|---|')
    rows = []
    if mitogen:
        over_linear = per_task('mitogen_linear', 'queue_info') / per_task('linear', 'ping')
        over_mitogen = per_task('mitogen_linear', 'queue_info') / per_task('mitogen_linear', 'ping')
        rows.append((MITOGEN_OVER_LINEAR_PING, 'celery_queue_info task under mitogen_linear / ping task under linear',
                     over_linear, '%.2f×'))
        rows.append((MITOGEN_OVER_MITOGEN_PING, 'celery_queue_info task / ping task, both under mitogen_linear',
                     over_mitogen, '%.2f×'))
    for strategy in strategies:
        rows.append((MODULE_SHARE, 'celery_queue_info task − floor with redis-py task (the module\'s own share), %s'
                     % strategy, per_task(strategy, 'queue_info') - per_task(strategy, 'floor_redis'), '%.3f s'))
    for target, comparison, value, shown in rows:
        add('| %s | **%s** | %s: %s |' % (comparison, shown % value, target.shown, mark(target.met(value))))
        targets.append((target.section, '%s, %d Redis queues, per task' % (comparison, floor['n_queues']),
                        shown % value, target.shown, mark(target.met(value))))
    if not mitogen:
        targets.append(not_measured(MITOGEN_OVER_LINEAR_PING, 'celery_queue_info task (mitogen_linear) / ping task '
                                    '(linear): no Mitogen in the virtualenv'))
        targets.append(not_measured(MITOGEN_OVER_MITOGEN_PING, 'celery_queue_info task / ping task, mitogen_linear: '
                                    'no Mitogen in the virtualenv'))
    for strategy in strategies:
        add('| celery_queue_info task, `priorities: all` − default, %s | %+.3f s | – |' % (
            strategy, per_task(strategy, 'queue_info_all') - per_task(strategy, 'queue_info')))
        add('| celery_queue_info task / ping task, %s | %.2f× | – |' % (
            strategy, per_task(strategy, 'queue_info') / per_task(strategy, 'ping')))
    add('')
    lines.extend(floor_first_and_later(floor, labels))
    lines.extend(floor_inprocess(floor))
    return lines


def floor_first_and_later(floor, labels):
    """Part of 1b: from the warm-up run (bench_timer callback), a playbook's first task against each later one."""
    warmup = floor.get('warmup')
    if not warmup:
        return []
    lines = ['Where a per-task figure goes, from the warm-up run of each playbook (the bench_timer callback: a '
             'task\'s start to its result on the controller, one run): the **first** task also pays for the '
             'connection and, under Mitogen, for loading the module; **later** is the median of tasks 2 to %d.'
             % floor['n_tasks'], '', '| strategy | variant | first task | later tasks |', '|---|---|---|---|']
    for strategy in floor['strategies']:
        for name, label in labels:
            entry = warmup.get('%s/%s' % (strategy, name))
            if entry:
                lines.append('| %s | %s | %.0f ms | %s |' % (strategy, label, entry['first'] * 1000,
                                                             spread(entry['later'], 'ms', 0)))
    lines.append('')
    later = dict((key, entry['later']['median']) for key, entry in warmup.items())
    if 'mitogen_linear/queue_info' in later and later.get('linear/ping') and later.get('mitogen_linear/ping'):
        lines.append('Later tasks only: celery_queue_info under mitogen_linear / ping under linear **%.2f×**; / ping '
                     'under mitogen_linear **%.2f×**; celery_queue_info − the floor with redis-py, mitogen_linear '
                     '**%.3f s**.' % (later['mitogen_linear/queue_info'] / later['linear/ping'],
                                      later['mitogen_linear/queue_info'] / later['mitogen_linear/ping'],
                                      later['mitogen_linear/queue_info'] - later['mitogen_linear/floor_redis']))
        lines.append('')
        lines.append('Why a celery_queue_info task costs more than the floor under Mitogen, though its `main()` takes '
                     'about as long as the floor\'s work (the table below): Mitogen runs a module in its persistent '
                     'interpreter only when the module uses no module_utils beyond ansible-core\'s. A module with a '
                     'collection\'s module_utils (every module here, as in community.general) runs in a new fork of '
                     'a clean interpreter for each task (`NewStylePlanner.should_fork` in ansible_mitogen/planner.py), '
                     'which imports redis-py again (redis-py 8 imports asyncio: about 0.1 s) along with the '
                     'module_utils. ping and the floor run in the persistent interpreter, where redis-py stays '
                     'imported after their first task.')
        lines.append('')
    return lines


def amqp_queue_info(amqp, targets):
    """2. celery_queue_info over RabbitMQ queues, against rabbitmqctl and the management API (no target)."""
    lines = ['## 2. celery_queue_info over %s RabbitMQ queues' % (amqp['n_queues'] if amqp else 'N'), '']
    add = lines.append
    if not amqp:
        add('Not measured: bench/amqp_info.py failed (see the output of bench/run).')
        return lines
    variants = amqp['variants']
    queue_info, rabbitmqctl, curl, code = (
        variants[name] for name in ('queue_info', 'rabbitmqctl', 'curl', 'module_utils'))
    add('%d queues declared with the arguments Celery gave its own queue (`%s`), durable, 3 messages each '
        '(copies of messages Celery published, fresh ids), %d in all. celery_queue_info discovers them through '
        'the management API, then declares each passively over AMQP (real-time ready/consumers) and takes '
        'unacked counts from one management call.' % (
            amqp['n_queues'], json.dumps(amqp['queue_arguments']), amqp['ready']))
    add('')
    add('| variant | wall | task | command |')
    add('|---|---|---|---|')
    add('| celery_queue_info, one task | %s | %s | `%s` |' % (
        spread(queue_info['wall']), spread(queue_info['task']), queue_info['command']))
    add('| rabbitmqctl list_queues | %s | – | `%s` |' % (spread(rabbitmqctl['wall']), rabbitmqctl['command']))
    add('| one management API call | %s | – | `%s` |' % (spread(curl['wall'], 'ms', 1), curl['command']))
    add('| the module\'s code in process, no Ansible | %s | – | %s |' % (spread(code['wall'], 'ms', 1), code['command']))
    add('')
    task_over_ctl = ratio(queue_info['task'], rabbitmqctl['wall'])
    add('| ratio (no target) | value |')
    add('|---|---|')
    add('| celery_queue_info task / rabbitmqctl | %.2f× |' % task_over_ctl)
    add('| celery_queue_info wall / rabbitmqctl | %.2f× |' % ratio(queue_info['wall'], rabbitmqctl['wall']))
    add('| celery_queue_info task / management API call | %.0f× |' % ratio(queue_info['task'], curl['wall']))
    add('| module code in process / management API call | %.1f× |' % ratio(code['wall'], curl['wall']))
    add('| module code in process / rabbitmqctl | %.2f× |' % ratio(code['wall'], rabbitmqctl['wall']))
    add('')
    add('rabbitmqctl and the API report the management statistics (which lag up to ~5 s); the module\'s ready '
        'and consumer counts are real time. Note rabbitmqctl and curl need shell access to a RabbitMQ node or '
        'the API port; the module needs AMQP (and the API for discovery and unacked counts).')
    add('')
    targets.append(('2', 'celery_queue_info task / rabbitmqctl list_queues, %d queues' % amqp['n_queues'],
                    '%.2f×' % task_over_ctl, 'none (report)', '–'))
    return lines


def purge(purged, targets):
    """3. Purging one big queue, per broker: celery_queue against `celery purge` (no target)."""
    lines = ['## 3. Purging one big queue: celery_queue vs `celery purge`', '']
    add = lines.append
    if not purged:
        add('Not measured: bench/purge.py failed (see the output of bench/run).')
        return lines
    for broker, count in (('redis', purged['redis_n']), ('amqp', purged['amqp_n'])):
        if broker not in purged:
            continue
        ours, celerys = purged[broker]['celery_queue'], purged[broker]['celery_purge']
        add('**%s**, %s messages in `%s`%s, refilled before every run (refill not timed: %s).' % (
            'Redis' if broker == 'redis' else 'RabbitMQ', thousands(count), purged['queue'],
            ' (90 % bare key, 10 % priority step 3)' if broker == 'redis' else
            ' (durable, persistent messages, Celery\'s queue arguments)', spread(ours['fill'], digits=1)))
        add('')
        add('| variant | wall | task | command |')
        add('|---|---|---|---|')
        add('| celery_queue state=purged, one task | %s | %s | `%s` |' % (
            spread(ours['wall']), spread(ours['task']), ours['command']))
        add('| celery purge | %s | – | `%s` |' % (spread(celerys['wall']), celerys['command']))
        add('')
        wall_ratio = ratio(ours['wall'], celerys['wall'])
        task_ratio = ratio(ours['task'], celerys['wall'])
        add('Ratio celery_queue / celery purge: wall **%.2f×**, task %.2f×. Both removed every message (checked '
            'each run: the module\'s `removed`, celery\'s "Purged N messages", and the queue empty after).'
            % (wall_ratio, task_ratio))
        add('')
        targets.append(('3', 'celery_queue / celery purge, %s msgs on %s' % (thousands(count), broker),
                        'wall %.2f×, task %.2f×' % (wall_ratio, task_ratio), 'none (report)', '–'))
    return lines


def breakdown(backlog, targets):
    """4. breakdown over a big Redis backlog: throughput in process and as a task, and the longest Redis command."""
    lines = ['## 4. breakdown over a %s-message Redis backlog' % (thousands(backlog['n']) if backlog else 'N'), '']
    add = lines.append
    if not backlog:
        add('Not measured: bench/breakdown.py failed (see the output of bench/run).')
        targets.append(not_measured(BREAKDOWN_RATE, 'breakdown throughput'))
        targets.append(not_measured(LONGEST_COMMAND, 'longest Redis command during breakdown'))
        return lines
    count = backlog['n']
    add('%s messages, %.0f bytes each on average (copies of what Celery wrote for 5 task names: %s), %s on '
        'the bare key and %s on priority step 3; Redis used %.0f MB. Filled with pipelined multi-value LPUSH '
        'in %.1f s (%.0fk msgs/s).' % (
            thousands(count), backlog['mean_size'],
            ', '.join('%s %s' % (task, thousands(tasks)) for task, tasks in
                      sorted(backlog['expected'].items(), key=lambda item: -item[1])),
            thousands(backlog['depth']['0']), thousands(backlog['depth']['3']), backlog['used_memory'] / 1e6,
            backlog['fill_seconds'], count / backlog['fill_seconds'] / 1000))
    add('')
    add('| measured | time | throughput | how |')
    add('|---|---|---|---|')
    add('| RedisQueues.breakdown() in process | %s | **%s** | %s |' % (
        spread(backlog['inprocess']), rate(count, backlog['inprocess']), backlog['commands']['inprocess']))
    add('| celery_queue_info breakdown=true, task | %s | **%s** | `%s` |' % (
        spread(backlog['module_task']), rate(count, backlog['module_task']), backlog['commands']['module']))
    add('| the same, whole ansible-playbook | %s | %s | (same) |' % (
        spread(backlog['module_wall']), rate(count, backlog['module_wall'])))
    add('| breakdown() as it was before bench/ changed it (task_name_of per element) | %s | %s | same data, '
        'same process |' % (spread(backlog['reference']), rate(count, backlog['reference'])))
    if 'one_at_a_time' in backlog:
        add('| breakdown() reading one LRANGE at a time, each counted before the next is sent (as before it read '
            'one chunk ahead) | %s | %s | same data, same process |' % (
                spread(backlog['one_at_a_time']), rate(count, backlog['one_at_a_time'])))
    add('| reading alone (`_chunks`, %d-element LRANGEs, elements dropped) | %s | %s | the floor for any '
        'parser |' % (backlog['read_chunk'], spread(backlog['fetch']), rate(count, backlog['fetch'])))
    add('')
    lines.extend(longest_redis_command(backlog))
    in_process_rate = count / backlog['inprocess']['median']
    task_rate = count / backlog['module_task']['median']
    slowest = backlog['slowlog_ours_max_ms']
    slowest_ok = slowest is None or LONGEST_COMMAND.met(slowest)
    slowest_shown = '%.1f ms' % slowest if slowest is not None else None
    add('| ratio / figure | value | target |')
    add('|---|---|---|')
    add('| in-process throughput | %.0fk msgs/s | ≥ 300k: %s |' % (
        in_process_rate / 1000, mark(BREAKDOWN_RATE.met(in_process_rate))))
    add('| module task throughput | %.0fk msgs/s | ≥ 300k: %s |' % (
        task_rate / 1000, mark(BREAKDOWN_RATE.met(task_rate))))
    add('| longest Redis command | %s | %s: %s |' % (
        slowest_shown or '< %.0f ms' % backlog['slowlog_threshold_ms'], LONGEST_COMMAND.shown, mark(slowest_ok)))
    add('| breakdown() now / before the change | %.2f× faster |  – |' % ratio(
        backlog['reference'], backlog['inprocess']))
    add('')
    for how, messages_per_second in (('in process', in_process_rate), ('module task', task_rate)):
        targets.append((BREAKDOWN_RATE.section, 'breakdown of %s msgs, %s' % (thousands(count), how),
                        '%.0fk msgs/s' % (messages_per_second / 1000), BREAKDOWN_RATE.shown,
                        mark(BREAKDOWN_RATE.met(messages_per_second))))
    targets.append((LONGEST_COMMAND.section, 'longest single Redis command during breakdown',
                    slowest_shown or '< %.0f ms (none logged)' % backlog['slowlog_threshold_ms'],
                    LONGEST_COMMAND.shown, mark(slowest_ok)))
    return lines


def longest_redis_command(backlog):
    """Part of 4: what the slowlog saw during the breakdowns, and the wait for each LRANGE reply."""
    slowest = backlog['slowlog_ours_max_ms']
    slowest_anyone = backlog['slowlog_all_max_ms']
    entries = backlog['slowlog_entries']
    threshold = backlog['slowlog_threshold_ms']
    if slowest is None:
        seen = 'no command of this benchmark reached %.0f ms' % threshold
    else:
        seen = ('longest %.1f ms' % slowest) + (' (%s)' % entries[0]['command'] if entries else '')
    lines = ['Longest single Redis command: slowlog at %.0f ms (`%s`) around each of the %d in-process and %d module '
             'runs: %s. Client-side wait for each LRANGE reply (%d per run; sent one chunk ahead; includes transfer '
             'and parsing): median %.1f ms, max %.1f ms.' % (
                 threshold, backlog['commands']['slowlog'], lib.REPEAT, lib.REPEAT, seen,
                 backlog['lrange_calls_per_run'], backlog['lrange_ms']['median'], backlog['lrange_ms']['max'])]
    if entries:
        lines.append('')
        lines.append(
            'Commands of this benchmark that reached %.0f ms: %d of about %s LRANGEs watched; the longest: %s. '
            'The slowlog times the command inside Redis, so a pause of the Redis process (this is a VM with CPU '
            'steal, shared with other sessions) counts too; the reply to a chunk of %d elements normally comes '
            'in %.1f ms.' % (threshold, backlog['slowlog_ours_count'], thousands(backlog['lrange_watched']),
                             ', '.join('%.1f ms `%s`' % (entry['ms'], entry['command']) for entry in entries[:5]),
                             backlog['read_chunk'], backlog['lrange_ms']['median']))
    if slowest_anyone is not None and (slowest is None or slowest_anyone > slowest):
        lines.append('(The server-wide slowlog also held a %.1f ms command of another client.)' % slowest_anyone)
    lines.append('')
    return lines


def checks(checked, targets):
    """5. No celery/kombu in the Redis path, breakdown's equivalence, and where a module task's time goes."""
    lines = ['## 5. Checks', '']
    add = lines.append
    if not checked:
        add('Not run: bench/checks.py failed (see the output of bench/run).')
        targets.append(('5', 'the Redis queue modules import neither celery nor kombu', 'n/a', 'none imported',
                        '**not measured**'))
        return lines
    imports = checked['imports']
    add('**No celery, no kombu.** In a fresh interpreter, importing both queue modules leaves these celery/kombu '
        'modules in `sys.modules`: `%s` (exit %d):' % (imports['import_only']['output'], imports['import_only']['rc']))
    add('')
    add('    %s' % imports['import_only']['command'])
    add('')
    result = imports['run_path']['result']
    add('Then the whole Redis path run in such an interpreter (connect, discover, counts, peek 5, breakdown, '
        'purge in check mode, on a 50-message queue): celery/kombu modules after the imports `%s`, after the run '
        '`%s`; results right: %s. (`%s`)' % (
            json.dumps((result.get('steps') or {}).get('import')), json.dumps((result.get('steps') or {}).get('run')),
            'yes' if imports['run_path']['ok'] else 'NO', imports['run_path']['command']))
    if result.get('heavy'):
        add('')
        add('Also recorded (slow to import, needed only for RabbitMQ): of pika, ansible.module_utils.urls and '
            'cryptography.x509, the Redis path has imported `%s` after the imports and `%s` after the run.' % (
                json.dumps(result['heavy'].get('import')), json.dumps(result['heavy'].get('run'))))
    add('')
    equivalence = checked['breakdown_equivalence']
    add('**breakdown() == task_name_of() per element**: %s, on %d kinds of elements (escaped, unicode, empty, '
        'missing and unterminated names, compact JSON, protocol 1 bodies, not JSON, not UTF-8) in %d random '
        'mixes.' % ('holds' if equivalence['passed'] else 'FAILS', equivalence['kinds'], equivalence['mixes']))
    add('')
    targets.append(('5', 'celery_queue_info / celery_queue import neither celery nor kombu (import and Redis run)',
                    'none' if imports['passed'] else 'imported', 'none imported', mark(imports['passed'])))
    costs = checked['import_costs']
    payloads = checked['ansiballz']
    add('**Where a module task\'s time goes** (fresh interpreter each time):')
    add('')
    add('| what | time |')
    add('|---|---|')
    add('| `python AnsiballZ_ping.py` (the payload Ansible built, run by hand; %d bytes) | %s |' % (
        payloads['ping']['bytes'], spread(payloads['ping']['run'])))
    add('| `python AnsiballZ_celery_queue_info.py` (one Redis queue named; %d bytes) | %s |' % (
        payloads['celery_queue_info']['bytes'], spread(payloads['celery_queue_info']['run'])))
    add('| import ansible.module_utils.basic (ping pays it too) | %s |' % spread(costs['basic']))
    add('| import celery_queue_info (module + module_utils + libraries) | %s |' % spread(costs['celery_queue_info']))
    add('| import redis alone | %s |' % spread(costs['redis']))
    add('| import pika alone | %s |' % spread(costs['pika']))
    add('| import ansible.module_utils.urls alone | %s |' % spread(costs['urls']))
    add('')
    cumulative = costs.get('importtime_cumulative_s') or {}
    if cumulative:
        add('`python -X importtime` of celery_queue_info (one run, cumulative, includes the tool\'s overhead): %s.' % (
            ', '.join('%s %.0f ms' % (name.replace('ansible_collections.celeryops.fleet.plugins.', ''), seconds * 1000)
                      for name, seconds in sorted(cumulative.items(), key=lambda item: -item[1]))))
        add('')
    return lines


def worker_info_figures(size):
    """Section 6's figures for one fleet size: the wall ratio to the CLI, and the task's cost over ping (in the same
    playbook where measured so, since the target says so; else each alone), shown with 3 decimals where 2 would print
    the limit itself for a figure on the other side of it."""
    variants = size['variants']
    wall_ratio = ratio(variants['worker_info']['wall'], variants['celery_cli']['wall'])
    apart = variants['worker_info']['task']['median'] - variants['ping']['task']['median']
    beside = size.get('beside')
    diff = beside['worker_info']['median'] - beside['ping']['median'] if beside else apart
    shown_ratio = ('%.3f×' if round(wall_ratio, 2) == WORKER_INFO_WALL.limit else '%.2f×') % wall_ratio
    shown_diff = ('%+.3f s' if round(diff, 2) == WORKER_INFO_TASK.limit else '%+.2f s') % diff
    return wall_ratio, apart, diff, shown_ratio, shown_diff


def worker_info(workers, targets):
    """6. celery_worker_info against the celery CLI on real workers, per fleet size."""
    lines = ['## 6. celery_worker_info vs the celery CLI, on real workers', '']
    add = lines.append
    if not workers:
        add('Not measured: bench/worker_info.py failed (see the output of bench/run).')
        targets.append(not_measured(WORKER_INFO_WALL, 'celery_worker_info playbook wall / celery CLI sequence wall'))
        targets.append(not_measured(WORKER_INFO_TASK, 'celery_worker_info task − ping task'))
        return lines
    sizes = [workers['sizes'][key] for key in workers['order']]
    first = sizes[0]
    add('Real Celery workers of the integration tests\' app (`tests/integration/app/fleet_tasks.py`) on Redis db %d, '
        'idle, consuming `%s`: %s, each started once per size with the harness\'s `Worker` '
        '(tests/integration/harness.py) and killed at the end. Ready (every worker logged ` ready.`) after %s. '
        'One of them:' % (
            lib.REDIS_DB, workers['queue'],
            ' then '.join('%d (`%s` … `%s`)' % (size['n'], size['names'][0], size['names'][-1]) for size in sizes),
            ', '.join('%.1f s (%d)' % (size['start_seconds'], size['n']) for size in sizes)))
    add('')
    add('    %s' % first['worker_command'])
    add('')
    add('Per round the variants take turns: ansible.builtin.ping; celery_worker_info in one task '
        '(`expected_nodes` = the node names, `include: %s`, `timeout: %s`: it returns as soon as every node '
        'answered every section); the celery CLI asking for the same, one command after the other, timed as the '
        'whole sequence:' % (json.dumps(workers['include']).replace('"', ''), workers['timeout']))
    add('')
    add('    %s' % workers['commands']['celery_cli'])
    add('')
    add('Each celery command starts a Python process with celery and the app, then collects replies until none has '
        'come for its `--timeout` (1 s by default): it is not told how many workers to expect.')
    add('')
    add('Checked every run: the module\'s `online` is exactly the node names, `missing`, `unexpected` and '
        '`duplicates` are empty and every node answered every section; every CLI command lists exactly the nodes '
        '(`->  <node>: OK`, `N nodes online.`). %d rounds per size (the other sections: %d; a round takes about '
        '20 s).' % (workers['rounds'], lib.REPEAT))
    add('')
    add('| workers | variant | wall | task | command |')
    add('|---|---|---|---|---|')
    for size in sizes:
        variants = size['variants']
        add('| %d | ansible.builtin.ping | %s | %s | `%s` |' % (
            size['n'], spread(variants['ping']['wall']), spread(variants['ping']['task']), workers['commands']['ping']))
        add('| %d | celery_worker_info, one task (replies in: %s; result %.1f kB) | %s | %s | `%s` |' % (
            size['n'], spread(variants['worker_info']['elapsed']),
            (variants['worker_info'].get('result_bytes') or 0) / 1000.0,
            spread(variants['worker_info']['wall']), spread(variants['worker_info']['task']), size['command']))
        if size.get('beside'):
            add('| %d | the same playbook: ping (%s) and celery_worker_info (%s), in each order once a round | – | '
                'see left | `%s` (and `ping_first=false`) |' % (
                    size['n'], spread(size['beside']['ping']), spread(size['beside']['worker_info']),
                    size['beside_command']))
        add('| %d | celery CLI: status + inspect stats, active, reserved, active_queues | %s | – | the sequence '
            'above (%s) |' % (size['n'], spread(variants['celery_cli']['wall']), ', '.join(
                '`%s` %s' % (step['command'].replace('celery -A fleet_tasks ', ''), spread(step['wall']))
                for step in variants['celery_cli']['steps'])))
    add('')
    add('| workers | ratio / figure | value | target |')
    add('|---|---|---|---|')
    for size in sizes:
        wall_ratio, apart, diff, shown_ratio, shown_diff = worker_info_figures(size)
        add('| %d | celery_worker_info wall / celery CLI sequence wall | **%s** (the CLI takes %.1f× as long) | '
            '%s: %s |' % (size['n'], shown_ratio, 1 / wall_ratio, WORKER_INFO_WALL.shown,
                          mark(WORKER_INFO_WALL.met(wall_ratio))))
        if size.get('beside'):
            add('| %d | celery_worker_info task − ping task, in the same playbook | **%s** | %s: %s |' % (
                size['n'], shown_diff, WORKER_INFO_TASK.shown, mark(WORKER_INFO_TASK.met(diff))))
        add('| %d | celery_worker_info task − ping task, each alone in its playbook | %+.2f s (%.2f×) | %s |' % (
            size['n'], apart, ratio(size['variants']['worker_info']['task'], size['variants']['ping']['task']),
            '(no target)' if size.get('beside') else
            '%s: %s' % (WORKER_INFO_TASK.shown, mark(WORKER_INFO_TASK.met(apart)))))
        targets.append((WORKER_INFO_WALL.section,
                        'celery_worker_info playbook wall / celery status + 4 × inspect, %d workers' % size['n'],
                        shown_ratio, WORKER_INFO_WALL.shown, mark(WORKER_INFO_WALL.met(wall_ratio))))
        targets.append((WORKER_INFO_TASK.section,
                        'celery_worker_info task − ping task in the same playbook, %d workers' % size['n'],
                        shown_diff, WORKER_INFO_TASK.shown, mark(WORKER_INFO_TASK.met(diff))))
    add('')
    add('**Where the module\'s time goes.** The module\'s `gather()` run in the bench\'s process with the same '
        'parameters (no Ansible), `Control`\'s parts timed; and the module\'s import in a fresh interpreter, against '
        '`ansible.module_utils.basic` alone (which ping pays too):')
    add('')
    add('| workers | connect | request (all replies) | close | gather() in all | import basic | import celery_worker_info |')
    add('|---|---|---|---|---|---|---|')
    for size in sizes:
        parts = size['inprocess']['as_is']
        add('| %d | %s | %s | %s | %s | %s | %s |' % (
            size['n'], spread(parts['connect'], 'ms', 0), spread(parts['request'], 'ms', 0),
            spread(parts['close'], 'ms', 0), spread(parts['gather'], 'ms', 0), spread(size['imports']['basic'], 'ms', 0),
            spread(size['imports']['module'], 'ms', 0)))
    add('')
    add('(`%s`; `%s`)' % (workers['commands']['imports']['basic'], workers['commands']['imports']['module']))
    add('')
    return lines


def finding_queue_info_fixed_cost(redis, checked):
    """Why target 1 is missed: a fixed cost, not the broker work."""
    variants = redis['variants']
    ping, full = variants['ping']['task']['median'], variants['queue_info']['task']['median']
    broker_work = variants['module_utils']['wall']['median']
    payloads = checked['ansiballz']
    by_hand = payloads['celery_queue_info']['run']['median'] - payloads['ping']['run']['median']
    text = ('Target 1 is missed by a fixed cost, not by the work. A Redis celery_queue_info task over %d queues '
            'costs %.2f s more than a ping task; its broker work (connect, discover, %d LLENs, unacked) is %.0f ms '
            'in process.' % (redis['n_queues'], full - ping, 4 * redis['n_queues'], broker_work * 1000))
    if 'queue_info_one' in variants:
        one = variants['queue_info_one']['task']['median']
        text += (' With one queue named the task already costs %.2f s over ping (%.2f×): the payloads run by hand '
                 '(AnsiballZ, no controller) differ by %.2f s, the module\'s imports and start-up; the other %.2f s '
                 'is the controller\'s share (building and shipping a larger payload, handling the result). Going '
                 'from 1 to %d queues adds about %.2f s: %.0f ms of broker work and %.2f s of producing and '
                 'handling a %.0f kB result (per-task times spread by ±0.2 s here: read these as estimates).' % (
                     one - ping, one / ping, by_hand, (one - ping) - by_hand, redis['n_queues'], full - one,
                     broker_work * 1000, max(full - one - broker_work, 0),
                     (variants['queue_info'].get('result_bytes') or 0) / 1000.0))
    if 'floor_redis' in variants:
        floor = variants['floor_redis']['task']['median']
        text += (' A bench-only module that does no broker work but imports redis-py and returns the same result '
                 'takes %.2f s (%.2f× a ping task): Ansible\'s cost for this result and redis-py\'s import. '
                 'celery_queue_info takes %.2f s more than that floor: shipping and compiling its own code, '
                 'its options, connecting and the broker work (%.0f ms of it in process).' % (
                     floor, floor / ping, full - floor, broker_work * 1000))
    costs = checked['import_costs']
    heavy = ((checked['imports']['run_path'].get('result') or {}).get('heavy') or {}).get('run')
    if heavy:
        text += (' The Redis path still imports %s, which only the AMQP layer needs (pika alone %s, '
                 'ansible.module_utils.urls alone %s in fresh interpreters): import it only for amqp:// URLs.' % (
                     ', '.join(heavy), spread(costs['pika']), spread(costs['urls'])))
    elif heavy is not None:
        text += (' The Redis path imports neither pika nor ansible.module_utils.urls (checked in 5; they would '
                 'cost %s and %s alone). %s leaves %.2f s (half a ping task) for everything the module does '
                 'beyond ping; redis-py\'s import alone takes %s (redis-py 8 also imports its asyncio client), '
                 'and Ansible ships and starts a larger module than ping.' % (
                     spread(costs['pika']), spread(costs['urls']), QUEUE_INFO.figure, ping * (QUEUE_INFO.limit - 1),
                     spread(costs['redis'])))
    return text


def finding_bindings_read_twice(redis):
    """celery_queue_info reads the binding sets more than once per run (when main() was timed)."""
    calls, spent = redis['module_main']['RedisQueues.bindings']
    timed = redis['module_main']
    return (
        'celery_queue_info reads the binding sets %d times per run on Redis: discover() calls bindings() (a SCAN '
        'of the keyspace per binding prefix, then SMEMBERS of every set) and queue_states() calls it again. Over '
        '%d queues that is %.0f ms of %.0f ms in main(). Passing the first result on (or caching it on the '
        'RedisQueues object for the run) saves %.0f ms; in `_queues.py`/`_redis_queues.py`, not made here. Also '
        'in main(): exit_json takes %.0f ms to scrub no_log values (broker_url is no_log) from a %.0f kB result '
        'and print it; that is Ansible\'s and grows with the number of queues.' % (
            calls, redis['n_queues'], spent * 1000, timed['main() in all'][1] * 1000,
            spent * 1000 * (calls - 1) / calls,
            timed.get('AnsibleModule.exit_json (no_log scrubbing, JSON out)', [0, 0])[1] * 1000,
            timed.get('result bytes', [0, 0])[1] / 1000.0))


def findings_breakdown(backlog):
    """What made breakdown() faster, and what the module task adds to it."""
    count = backlog['n']
    found = [
        'breakdown() was parse-bound: task_name_of() per element (a regex, then a decode) ran the %s-message '
        'backlog at '
        '%s in process, while reading alone runs at %s. bench/ changed breakdown() (a tiny, local change in '
        '`_redis_queues.py`): find `"task": "` with bytes.find, count raw names, decode each distinct name once, '
        'and fall back to task_name_of() for anything else, so the result is the same (checked in section 5 '
        'and against the known counts every run). Now %s (%.2f× faster). Of that time, reading takes %.0f %% '
        '(%d LRANGEs of %d elements, %.1f ms median wait for each reply) and the Python loop over the elements '
        'the rest, %.1f µs per message.' % (
            thousands(count), rate(count, backlog['reference']), rate(count, backlog['fetch']),
            rate(count, backlog['inprocess']), ratio(backlog['reference'], backlog['inprocess']),
            100.0 * backlog['fetch']['median'] / backlog['inprocess']['median'], backlog['lrange_calls_per_run'],
            backlog['read_chunk'], backlog['lrange_ms']['median'],
            1e6 * (backlog['inprocess']['median'] - backlog['fetch']['median']) / count)]
    if 'one_at_a_time' in backlog:
        found.append(
            'breakdown() (and a filtered purge) now send the next LRANGE before counting the current chunk, so '
            'Redis builds and sends it meanwhile: %s against %s when each LRANGE waits for the counting of the '
            'one before (%.2f× faster, same data, same process). Every command still reads at most %d elements.'
            % (rate(count, backlog['inprocess']), rate(count, backlog['one_at_a_time']),
               ratio(backlog['one_at_a_time'], backlog['inprocess']), backlog['read_chunk']))
    task, in_process = backlog['module_task']['median'], backlog['inprocess']['median']
    if task > in_process:
        found.append(
            'The module task adds %.2f s to the in-process breakdown (Ansible\'s fixed cost, see 1 and 5), '
            'which weighs %.0f %% at %s messages.' % (
                task - in_process, 100 * (task - in_process) / task, thousands(count)))
    return found


def finding_worker_info_time(workers):
    """Where celery_worker_info's time over ping goes, and what the targets of 6 leave for it."""
    sizes = [workers['sizes'][key] for key in workers['order']]

    def in_process_ms(size, part):
        return '%.0f ms' % (size['inprocess']['as_is'][part]['median'] * 1000)
    smallest = sizes[0]
    parts = smallest['inprocess']['as_is']
    text = ('celery_worker_info speaks Celery\'s remote-control protocol itself over redis-py (pika on RabbitMQ), '
            'without importing kombu: connecting takes %s, sending every section and collecting every reply %s, '
            'closing %s (%s).' % (
                ', '.join(in_process_ms(size, 'connect') for size in sizes),
                ', '.join(in_process_ms(size, 'request') for size in sizes),
                ', '.join(in_process_ms(size, 'close') for size in sizes),
                ', '.join('%d workers' % size['n'] for size in sizes)))
    variants = smallest['variants']
    diff = variants['worker_info']['task']['median'] - variants['ping']['task']['median']
    imports = smallest['imports']['module']['median'] - smallest['imports']['basic']['median']
    rest = diff - imports - parts['connect']['median'] - parts['request']['median'] - parts['close']['median']
    text += (' Of the %.2f s the task costs over ping with %d workers, close() is %.2f s, the module\'s imports '
             'beyond ansible.module_utils.basic (redis-py) %.2f s, connecting %.2f s, asking and collecting '
             '%.2f s (of which up to %.1f s is the module\'s deliberate wait for duplicate node names: as long '
             'again as the answers took), and %.2f s is not '
             'accounted for by these (the controller\'s share for a larger payload and result, and noise: these are '
             'estimates, per-task times spread).' % (
                 diff, smallest['n'], parts['close']['median'], imports, parts['connect']['median'],
                 parts['request']['median'], workers.get('duplicate_grace', 0.1), rest))
    beside = smallest.get('beside')
    target_diff = diff   # what the target compares: the same playbook where it was measured
    if beside:
        target_diff = beside['worker_info']['median'] - beside['ping']['median']
        text += (' In the same playbook ping takes %.2f s and celery_worker_info %.2f s: %+.2f s. Each task '
                 'includes the controller building its module\'s payload (AnsiballZ), once per module and '
                 'playbook run: %.0f ms for ping, %.0f ms for celery_worker_info (timed in a fresh interpreter).' % (
                     beside['ping']['median'], beside['worker_info']['median'], target_diff,
                     smallest['payloads']['ping']['median'] * 1000,
                     smallest['payloads']['worker_info']['median'] * 1000))
    if not WORKER_INFO_TASK.met(target_diff):
        text += (' The %s target needs the imports, the collecting and the controller\'s share cut.'
                 % WORKER_INFO_TASK.figure)
    text += (' For the wall target: an ansible-playbook run of ping alone takes %s, so %s of the CLI '
             'sequence leaves %s for celery_worker_info beyond a ping playbook; it takes %s (%s).' % (
                 ', '.join('%.2f s' % size['variants']['ping']['wall']['median'] for size in sizes),
                 WORKER_INFO_WALL.figure,
                 ', '.join('%.2f s' % (WORKER_INFO_WALL.limit * size['variants']['celery_cli']['wall']['median']
                                       - size['variants']['ping']['wall']['median']) for size in sizes),
                 ', '.join('%.2f s' % (size['variants']['worker_info']['wall']['median']
                                       - size['variants']['ping']['wall']['median']) for size in sizes),
                 ', '.join('%d workers' % size['n'] for size in sizes)))
    return text


def finding_purge(purged):
    """The purge's time against celery purge's, on both brokers."""
    return ('Purge: the module removes with LLEN+UNLINK per priority key on Redis and one queue.purge on RabbitMQ, '
            'like celery purge; the difference in time is Ansible\'s fixed cost against celery\'s CLI start-up '
            '(task %s vs celery purge %s on Redis, %s vs %s on RabbitMQ).' % (
                spread(purged['redis']['celery_queue']['task']), spread(purged['redis']['celery_purge']['wall']),
                spread(purged['amqp']['celery_queue']['task']), spread(purged['amqp']['celery_purge']['wall'])))


def findings(data):
    """Performance findings in the modules, from whichever sections were measured."""
    redis, checked, backlog = data['redis_info'], data['checks'], data['breakdown']
    found = []
    if redis and checked:
        found.append(finding_queue_info_fixed_cost(redis, checked))
    timed = redis and redis.get('module_main')
    if timed and timed.get('RedisQueues.bindings', [0])[0] > 1:
        found.append(finding_bindings_read_twice(redis))
    if backlog:
        found.extend(findings_breakdown(backlog))
    if data['worker_info']:
        found.append(finding_worker_info_time(data['worker_info']))
    if data['purge'] and 'amqp' in data['purge']:
        found.append(finding_purge(data['purge']))
    if not found:
        return []
    return ['## Performance findings in the modules', ''] + ['- ' + text for text in found] + ['']


def targets_table(targets):
    return (['## Targets', '', '| # | comparison | measured | target | |', '|---|---|---|---|---|']
            + ['| %s | %s | %s | %s | %s |' % row for row in targets] + [''])


def reproduce():
    return [
        '## Reproduce',
        '',
        '    bench/run                 # full run, rewrites bench/RESULTS.md (about 7 minutes on 2 cores)',
        '    BENCH_QUICK=1 bench/run   # smaller data, 3 runs each; writes bench/RESULTS.quick.md',
        '',
        'Other knobs: BENCH_REPEAT, BENCH_REDIS_DB (default 5), BENCH_VHOST (default celeryops-bench), '
        'BENCH_REDIS_QUEUES, BENCH_AMQP_QUEUES, BENCH_REDIS_PURGE, BENCH_AMQP_PURGE, BENCH_BACKLOG, '
        'BENCH_LOOP_KEYS=all, BENCH_SKIP_AMQP_PURGE=1, BENCH_WORKER_ROUNDS (default 3, quick 2), '
        'BENCH_WORKER_SIZES (default 3,12), BENCH_FLOOR_ROUNDS (section 1b, default 7, quick 3), BENCH_RESULTS '
        '(output file), BENCH_SECTIONS (only these sections, e.g. `BENCH_SECTIONS=floor bench/run`: into '
        'bench/RESULTS.partial.md unless BENCH_RESULTS says), BENCH_SENTINEL_ROUNDS (section 9, default 5, quick 3; '
        '`BENCH_SECTIONS=sentinel bench/run` runs it alone: bench/sentinel.py writes its own section, like 7 and 8); '
        '`BENCH_SECTIONS=quorum bench/run` runs section 10 alone (bench/quorum.py, on the bench\'s RabbitMQ vhost); '
        '`BENCH_SECTIONS=hygiene bench/run` section 11 (bench/hygiene.py, on the bench\'s Redis database).',
        '',
    ]


def main():
    data = dict((name, load(name)) for name in SECTIONS)
    started = float(os.environ.get('BENCH_STARTED') or time.time())
    lines = header(data, time.time() - started)
    targets = []
    body = (redis_queue_info(data['redis_info'], targets) + per_task_floor(data['floor'], targets)
            + amqp_queue_info(data['amqp_info'], targets)
            + purge(data['purge'], targets) + breakdown(data['breakdown'], targets) + checks(data['checks'], targets)
            + worker_info(data['worker_info'], targets))
    lines += targets_table(targets) + body + findings(data) + reproduce()
    default = 'RESULTS.quick.md' if lib.QUICK else 'RESULTS.md'
    target = os.environ.get('BENCH_RESULTS') or os.path.join(lib.BENCH, default)
    with open(target, 'w') as handle:
        handle.write('\n'.join(lines))
    sys.stderr.write('==> wrote %s\n' % os.path.relpath(target, lib.ROOT))
    missing = [name for name in SECTIONS if data[name] is None]
    return 1 if missing else 0


if __name__ == '__main__':
    sys.exit(main())
