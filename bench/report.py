"""Write bench/RESULTS.md from the JSON files the benchmark scripts left in $BENCH_OUT."""

import datetime
import json
import os
import platform
import sys
import time

import lib

SECTIONS = ('redis_info', 'amqp_info', 'purge', 'breakdown', 'checks', 'worker_info')


def load(name):
    path = os.path.join(lib.OUT, name + '.json')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def s(summary, unit='s', digits=2):
    """median [min–max] of a summary."""
    if not summary:
        return 'n/a'
    scale = 1000.0 if unit == 'ms' else 1.0
    return '%.*f %s [%.*f–%.*f]' % (digits, summary['median'] * scale, unit, digits, summary['min'] * scale, digits,
                                    summary['max'] * scale)


def ratio(a, b):
    return a['median'] / b['median']


def mark(ok):
    return '**met**' if ok else '**not met**'


def rate(n, summary):
    """messages/s from the median, and the range from the slowest and fastest runs."""
    return '%.0fk msgs/s [%.0fk–%.0fk]' % (
        n / summary['median'] / 1000, n / summary['max'] / 1000, n / summary['min'] / 1000)


def versions():
    out = {}
    try:
        from importlib import metadata
        for dist in ('ansible-core', 'redis', 'hiredis', 'pika', 'celery', 'kombu'):
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
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    mem = '?'
    try:
        with open('/proc/meminfo') as f:
            mem = '%.0f GB RAM' % (int(f.readline().split()[1]) / 1024.0 / 1024.0)
    except (OSError, ValueError, IndexError):
        pass
    return '%d cores (%s), %s' % (os.cpu_count() or 0, model, mem)


def python_speed():
    """Seconds for 10,000,000 additions in a Python loop, best of 3: how fast this machine runs
    Python, to set runs on different machines side by side (the absolute targets scale with it)."""
    best = None
    for _run in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(10000000):
            total += i
        spent = time.perf_counter() - started
        best = spent if best is None else min(best, spent)
    return best


def main():
    data = dict((name, load(name)) for name in SECTIONS)
    lines, targets, findings = [], [], []
    w = lines.append
    started = float(os.environ.get('BENCH_STARTED') or time.time())
    elapsed = time.time() - started
    v = versions()
    w('# Benchmarks of celeryops.fleet')
    w('')
    w('Written by `%s` on %s (UTC); the run took %.0f s. **Do not edit: rerun it.**' % (
        'BENCH_QUICK=1 bench/run' if lib.QUICK else 'bench/run',
        datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M'), elapsed))
    w('')
    w('- Machine: %s; Linux %s; a Python loop of 10,000,000 additions takes %.2f s (best of 3, after the run). '
      'Load average at the start %s, at the end %s (other sessions may share the machine and the brokers).' % (
          machine(), platform.release(), python_speed(), os.environ.get('BENCH_LOAD_START', '?'),
          '%.2f %.2f %.2f' % os.getloadavg()))
    w('- Software: Python %s, ansible-core %s, redis-py %s + hiredis %s, pika %s, celery %s / kombu %s; '
      'Redis %s, RabbitMQ %s, all on loopback.' % (
          v.get('python'), v.get('ansible-core'), v.get('redis'), v.get('hiredis'), v.get('pika'), v.get('celery'),
          v.get('kombu'), v.get('redis-server'), v.get('rabbitmq')))
    wi = data['worker_info']
    w('- Every figure is the **median of %d runs [min–max]**%s%s; a ratio is of medians. Variants take turns '
      'within each round, on the same data.' % (
          lib.REPEAT, ' (quick mode: smaller data)' if lib.QUICK else '',
          ' (section 6: of %d runs, its rounds are long)' % wi['rounds'] if wi and wi['rounds'] != lib.REPEAT else ''))
    w('- Brokers: Redis db %d and RabbitMQ vhost `%s`, both emptied/deleted afterwards.' % (lib.REDIS_DB, lib.VHOST))
    w('- **wall** = the whole `ansible-playbook` process; **task** = the one task, from its start to its result '
      'on the controller (the span `ansible.posix.profile_tasks` reports), by the callback '
      '`bench/callback_plugins/bench_timer.py`. Every playbook run uses `-i localhost, -c local` and '
      '`gather_facts: false`, with `ANSIBLE_PYTHON_INTERPRETER` set to the venv (bench/run does it). '
      'Run commands from the repository root after `source scripts/bootstrap.sh && place_collection`.')
    w('')
    body = []
    b = body.append

    # -- 1 ----------------------------------------------------------------------------------------
    d = data['redis_info']
    b('## 1. celery_queue_info over %s Redis queues' % (('{:,}'.format(d['n_queues'])) if d else 'N'))
    b('')
    if not d:
        b('Not measured: bench/redis_info.py failed (see the output of bench/run).')
        targets.append(('1', 'celery_queue_info task vs ping task (Redis)', 'n/a', '≤ 1.5×', '**not measured**'))
    else:
        vv = d['variants']
        b('%d queues in kombu\'s layout: %d ready messages in all (3 per queue on the bare key, 1 more on '
          'priority step 3 in every 5th queue), kombu\'s `_kombu.binding.<q>` and `_kombu.binding_permanent.<q>` '
          'sets (members written exactly as kombu 5.7 wrote them for a probe queue, checked), and %d messages '
          'held in `unacked`. Envelopes are copies, with fresh ids, of messages Celery itself published. '
          'celery_queue_info discovers the queues (no `queues:` given) and reads all 4 priority keys of each.'
          % (d['n_queues'], d['ready'], d['unacked']))
        b('')
        b('| variant | wall | task | command |')
        b('|---|---|---|---|')
        b('| ansible.builtin.ping | %s | %s | `%s` |' % (s(vv['ping']['wall']), s(vv['ping']['task']), vv['ping']['command']))
        b('| celery_queue_info, one task | %s | %s | `%s` |' % (
            s(vv['queue_info']['wall']), s(vv['queue_info']['task']), vv['queue_info']['command']))
        if 'queue_info_one' in vv:
            b('| celery_queue_info, one queue named (`queues: [bench.q0000]`): the fixed cost | %s | %s | `%s` |' % (
                s(vv['queue_info_one']['wall']), s(vv['queue_info_one']['task']), vv['queue_info_one']['command']))
        floors = (('floor', 'the floor: a bench-only module returning the result celery_queue_info printed, no broker '
                   'work, no imports beyond ping\'s (bench/playbooks/library/bench_result_floor.py)'),
                  ('floor_redis', 'the same floor, importing redis-py first as any Redis queue module must'))
        for name, label in floors:
            if name in vv:
                b('| %s | %s | %s | `%s` |' % (label, s(vv[name]['wall']), s(vv[name]['task']), vv[name]['command']))
        b('| shell loop, one `redis-cli llen` per queue (%s) | %s | %s | `%s` |' % (
            'bare key only' if d['loop_keys'] == 'base' else 'all 4 priority keys',
            s(vv['llen_loop']['wall']), s(vv['llen_loop']['task']), vv['llen_loop']['command']))
        b('| one `redis-cli` reading %d `LLEN` (4 keys per queue) on stdin, no Ansible | %s | – | `%s` |' % (
            4 * d['n_queues'], s(vv['redis_cli_stdin']['wall'], 'ms', 1), vv['redis_cli_stdin']['command']))
        b('| the module\'s code in process (connect, discover, counts, unacked), no Ansible | %s | – | %s |' % (
            s(vv['module_utils']['wall'], 'ms', 1), vv['module_utils']['command']))
        b('')
        r_task = ratio(vv['queue_info']['task'], vv['ping']['task'])
        r_wall = ratio(vv['queue_info']['wall'], vv['ping']['wall'])
        r_loop_task = ratio(vv['llen_loop']['task'], vv['queue_info']['task'])
        r_loop_wall = ratio(vv['llen_loop']['wall'], vv['queue_info']['wall'])
        b('| ratio | value | target |')
        b('|---|---|---|')
        b('| celery_queue_info task / ping task | **%.2f×** | ≤ 1.5×: %s |' % (r_task, mark(r_task <= 1.5)))
        b('| celery_queue_info wall / ping wall | %.2f× | (≤ 1.5×: %s) |' % (r_wall, 'met' if r_wall <= 1.5 else 'not met'))
        b('| shell loop task / celery_queue_info task | %.2f× (the module is %.1f× faster) | – |' % (
            r_loop_task, r_loop_task))
        b('| shell loop wall / celery_queue_info wall | %.2f× | – |' % r_loop_wall)
        if 'queue_info_one' in vv:
            r_one = ratio(vv['queue_info_one']['task'], vv['ping']['task'])
            b('| celery_queue_info on one queue: task / ping task | %.2f× | ≤ 1.5×: %s even for one queue |' % (
                r_one, 'met' if r_one <= 1.5 else 'not met'))
        r_floor_redis = ratio(vv['floor_redis']['task'], vv['ping']['task']) if 'floor_redis' in vv else None
        if r_floor_redis is not None:
            r_floor = ratio(vv['floor']['task'], vv['ping']['task'])
            b('| floor task / ping task: Ansible\'s cost for this result alone | %.2f× | – |' % r_floor)
            b('| floor with redis-py task / ping task: the least any module returning this result over redis-py '
              'can take | **%.2f×** | ≤ 1.5×: %s |' % (r_floor_redis, 'met' if r_floor_redis <= 1.5 else 'not met'))
            b('| celery_queue_info task − floor with redis-py task: the module\'s own share | %.2f s | – |' % (
                vv['queue_info']['task']['median'] - vv['floor_redis']['task']['median']))
        b('| celery_queue_info task − ping task | %.2f s, of which the module\'s broker work is %.3f s |  – |' % (
            vv['queue_info']['task']['median'] - vv['ping']['task']['median'], vv['module_utils']['wall']['median']))
        b('')
        mm = d.get('module_main')
        if mm:
            b('celery_queue_info\'s `main()` run once in process as AnsiballZ runs it (ansible-core\'s parameter '
              'hand-over), over the same %d queues, with these calls timed (nested: discover() calls bindings()):'
              % d['n_queues'])
            b('')
            b('| call | calls | time |')
            b('|---|---|---|')
            for label in ('main() in all', 'RedisQueues.discover', 'RedisQueues.bindings', 'RedisQueues.depths',
                          'RedisQueues.unacked_by_queue', 'AnsibleModule.exit_json (no_log scrubbing, JSON out)'):
                if label in mm:
                    b('| %s | %d | %.0f ms |' % (label, mm[label][0], mm[label][1] * 1000))
            if 'result bytes' in mm:
                b('| (result printed) | – | %.0f kB |' % (mm['result bytes'][1] / 1000.0))
            b('')
        if d['loop_keys'] == 'base':
            b('The shell loop reads only the bare key of each queue (what celery-exporter counts), a quarter of '
              'the keys the module reads; `BENCH_LOOP_KEYS=all bench/run` makes it read all four (≈4× longer).')
            b('')
        floor_note = ('; the floor under any module returning this result over redis-py: %.2f×'
                      % r_floor_redis) if r_floor_redis is not None else ''
        targets.append(('1', 'celery_queue_info task / ping task, %d Redis queues' % d['n_queues'],
                        '%.2f× (wall %.2f×%s)' % (r_task, r_wall, floor_note), '≤ 1.5×', mark(r_task <= 1.5)))

    # -- 2 ----------------------------------------------------------------------------------------
    d = data['amqp_info']
    b('## 2. celery_queue_info over %s RabbitMQ queues' % (d['n_queues'] if d else 'N'))
    b('')
    if not d:
        b('Not measured: bench/amqp_info.py failed (see the output of bench/run).')
    else:
        vv = d['variants']
        b('%d queues declared with the arguments Celery gave its own queue (`%s`), durable, 3 messages each '
          '(copies of messages Celery published, fresh ids), %d in all. celery_queue_info discovers them through '
          'the management API, then declares each passively over AMQP (real-time ready/consumers) and takes '
          'unacked counts from one management call.' % (d['n_queues'], json.dumps(d['queue_arguments']), d['ready']))
        b('')
        b('| variant | wall | task | command |')
        b('|---|---|---|---|')
        b('| celery_queue_info, one task | %s | %s | `%s` |' % (
            s(vv['queue_info']['wall']), s(vv['queue_info']['task']), vv['queue_info']['command']))
        b('| rabbitmqctl list_queues | %s | – | `%s` |' % (s(vv['rabbitmqctl']['wall']), vv['rabbitmqctl']['command']))
        b('| one management API call | %s | – | `%s` |' % (s(vv['curl']['wall'], 'ms', 1), vv['curl']['command']))
        b('| the module\'s code in process, no Ansible | %s | – | %s |' % (
            s(vv['module_utils']['wall'], 'ms', 1), vv['module_utils']['command']))
        b('')
        b('| ratio (no target) | value |')
        b('|---|---|')
        b('| celery_queue_info task / rabbitmqctl | %.2f× |' % ratio(vv['queue_info']['task'], vv['rabbitmqctl']['wall']))
        b('| celery_queue_info wall / rabbitmqctl | %.2f× |' % ratio(vv['queue_info']['wall'], vv['rabbitmqctl']['wall']))
        b('| celery_queue_info task / management API call | %.0f× |' % ratio(vv['queue_info']['task'], vv['curl']['wall']))
        b('| module code in process / management API call | %.1f× |' % ratio(vv['module_utils']['wall'], vv['curl']['wall']))
        b('| module code in process / rabbitmqctl | %.2f× |' % ratio(vv['module_utils']['wall'], vv['rabbitmqctl']['wall']))
        b('')
        b('rabbitmqctl and the API report the management statistics (which lag up to ~5 s); the module\'s ready '
          'and consumer counts are real time. Note rabbitmqctl and curl need shell access to a RabbitMQ node or '
          'the API port; the module needs AMQP (and the API for discovery and unacked counts).')
        b('')
        targets.append(('2', 'celery_queue_info task / rabbitmqctl list_queues, %d queues' % d['n_queues'],
                        '%.2f×' % ratio(vv['queue_info']['task'], vv['rabbitmqctl']['wall']), 'none (report)', '–'))

    # -- 3 ----------------------------------------------------------------------------------------
    d = data['purge']
    b('## 3. Purging one big queue: celery_queue vs `celery purge`')
    b('')
    if not d:
        b('Not measured: bench/purge.py failed (see the output of bench/run).')
    else:
        for broker, n in (('redis', d['redis_n']), ('amqp', d['amqp_n'])):
            if broker not in d:
                continue
            vv = d[broker]
            b('**%s**, %s messages in `%s`%s, refilled before every run (refill not timed: %s).' % (
                'Redis' if broker == 'redis' else 'RabbitMQ', '{:,}'.format(n), d['queue'],
                ' (90 % bare key, 10 % priority step 3)' if broker == 'redis' else
                ' (durable, persistent messages, Celery\'s queue arguments)', s(vv['celery_queue']['fill'], digits=1)))
            b('')
            b('| variant | wall | task | command |')
            b('|---|---|---|---|')
            b('| celery_queue state=purged, one task | %s | %s | `%s` |' % (
                s(vv['celery_queue']['wall']), s(vv['celery_queue']['task']), vv['celery_queue']['command']))
            b('| celery purge | %s | – | `%s` |' % (s(vv['celery_purge']['wall']), vv['celery_purge']['command']))
            b('')
            rw = ratio(vv['celery_queue']['wall'], vv['celery_purge']['wall'])
            rt = ratio(vv['celery_queue']['task'], vv['celery_purge']['wall'])
            b('Ratio celery_queue / celery purge: wall **%.2f×**, task %.2f×. Both removed every message (checked '
              'each run: the module\'s `removed`, celery\'s "Purged N messages", and the queue empty after).' % (rw, rt))
            b('')
            targets.append(('3', 'celery_queue / celery purge, %s msgs on %s' % ('{:,}'.format(n), broker),
                            'wall %.2f×, task %.2f×' % (rw, rt), 'none (report)', '–'))

    # -- 4 ----------------------------------------------------------------------------------------
    d = data['breakdown']
    b('## 4. breakdown over a %s-message Redis backlog' % ('{:,}'.format(d['n']) if d else 'N'))
    b('')
    if not d:
        b('Not measured: bench/breakdown.py failed (see the output of bench/run).')
        targets.append(('4', 'breakdown throughput', 'n/a', '≥ 300k msgs/s', '**not measured**'))
        targets.append(('4', 'longest Redis command during breakdown', 'n/a', '≤ 50 ms', '**not measured**'))
    else:
        n = d['n']
        b('%s messages, %.0f bytes each on average (copies of what Celery wrote for 5 task names: %s), %s on '
          'the bare key and %s on priority step 3; Redis used %.0f MB. Filled with pipelined multi-value LPUSH '
          'in %.1f s (%.0fk msgs/s).' % (
              '{:,}'.format(n), d['mean_size'], ', '.join('%s %s' % (k, '{:,}'.format(c)) for k, c in
                                                          sorted(d['expected'].items(), key=lambda kv: -kv[1])),
              '{:,}'.format(d['depth']['0']), '{:,}'.format(d['depth']['3']), d['used_memory'] / 1e6,
              d['fill_seconds'], n / d['fill_seconds'] / 1000))
        b('')
        b('| measured | time | throughput | how |')
        b('|---|---|---|---|')
        b('| RedisQueues.breakdown() in process | %s | **%s** | %s |' % (
            s(d['inprocess']), rate(n, d['inprocess']), d['commands']['inprocess']))
        b('| celery_queue_info breakdown=true, task | %s | **%s** | `%s` |' % (
            s(d['module_task']), rate(n, d['module_task']), d['commands']['module']))
        b('| the same, whole ansible-playbook | %s | %s | (same) |' % (s(d['module_wall']), rate(n, d['module_wall'])))
        b('| breakdown() as it was before bench/ changed it (task_name_of per element) | %s | %s | same data, '
          'same process |' % (s(d['reference']), rate(n, d['reference'])))
        if 'one_at_a_time' in d:
            b('| breakdown() reading one LRANGE at a time, each counted before the next is sent (as before it read '
              'one chunk ahead) | %s | %s | same data, same process |' % (
                  s(d['one_at_a_time']), rate(n, d['one_at_a_time'])))
        b('| reading alone (`_chunks`, %d-element LRANGEs, elements dropped) | %s | %s | the floor for any '
          'parser |' % (d['read_chunk'], s(d['fetch']), rate(n, d['fetch'])))
        b('')
        in_rate = n / d['inprocess']['median']
        task_rate = n / d['module_task']['median']
        slow = d['slowlog_ours_max_ms']
        slow_all = d['slowlog_all_max_ms']
        b('Longest single Redis command: slowlog at %.0f ms (`%s`) around each of the %d in-process and %d module '
          'runs: %s. Client-side wait for each LRANGE reply (%d per run; sent one chunk ahead; includes transfer '
          'and parsing): median %.1f ms, max %.1f ms.' % (
              d['slowlog_threshold_ms'], d['commands']['slowlog'], lib.REPEAT, lib.REPEAT,
              ('no command of this benchmark reached %.0f ms' % d['slowlog_threshold_ms']) if slow is None else
              ('longest %.1f ms' % slow) + (' (%s)' % d['slowlog_entries'][0]['command'] if d['slowlog_entries'] else ''),
              d['lrange_calls_per_run'], d['lrange_ms']['median'], d['lrange_ms']['max']))
        if d['slowlog_entries']:
            b('')
            b('Commands of this benchmark that reached %.0f ms: %d of about %s LRANGEs watched; the longest: %s. '
              'The slowlog times the command inside Redis, so a pause of the Redis process (this is a VM with CPU '
              'steal, shared with other sessions) counts too; the reply to a chunk of %d elements normally comes '
              'in %.1f ms.' % (d['slowlog_threshold_ms'], d['slowlog_ours_count'], '{:,}'.format(d['lrange_watched']),
                               ', '.join('%.1f ms `%s`' % (e['ms'], e['command']) for e in d['slowlog_entries'][:5]),
                               d['read_chunk'], d['lrange_ms']['median']))
        if slow_all is not None and (slow is None or slow_all > slow):
            b('(The server-wide slowlog also held a %.1f ms command of another client.)' % slow_all)
        b('')
        b('| ratio / figure | value | target |')
        b('|---|---|---|')
        b('| in-process throughput | %.0fk msgs/s | ≥ 300k: %s |' % (in_rate / 1000, mark(in_rate >= 300000)))
        b('| module task throughput | %.0fk msgs/s | ≥ 300k: %s |' % (task_rate / 1000, mark(task_rate >= 300000)))
        b('| longest Redis command | %s | ≤ 50 ms: %s |' % (
            ('< %.0f ms' % d['slowlog_threshold_ms']) if slow is None else '%.1f ms' % slow,
            mark(slow is None or slow <= 50)))
        b('| breakdown() now / before the change | %.2f× faster |  – |' % ratio(d['reference'], d['inprocess']))
        b('')
        targets.append(('4', 'breakdown of %s msgs, in process' % '{:,}'.format(n), '%.0fk msgs/s' % (in_rate / 1000),
                        '≥ 300k msgs/s', mark(in_rate >= 300000)))
        targets.append(('4', 'breakdown of %s msgs, module task' % '{:,}'.format(n), '%.0fk msgs/s' % (task_rate / 1000),
                        '≥ 300k msgs/s', mark(task_rate >= 300000)))
        targets.append(('4', 'longest single Redis command during breakdown',
                        ('< %.0f ms (none logged)' % d['slowlog_threshold_ms']) if slow is None else '%.1f ms' % slow,
                        '≤ 50 ms', mark(slow is None or slow <= 50)))

    # -- 5 ----------------------------------------------------------------------------------------
    d = data['checks']
    b('## 5. Checks')
    b('')
    if not d:
        b('Not run: bench/checks.py failed (see the output of bench/run).')
        targets.append(('5', 'the Redis queue modules import neither celery nor kombu', 'n/a', 'none imported',
                        '**not measured**'))
    else:
        imp = d['imports']
        b('**No celery, no kombu.** In a fresh interpreter, importing both queue modules leaves these celery/kombu '
          'modules in `sys.modules`: `%s` (exit %d):' % (imp['import_only']['output'], imp['import_only']['rc']))
        b('')
        b('    %s' % imp['import_only']['command'])
        b('')
        res = imp['run_path']['result']
        b('Then the whole Redis path run in such an interpreter (connect, discover, counts, peek 5, breakdown, '
          'purge in check mode, on a 50-message queue): celery/kombu modules after the imports `%s`, after the run '
          '`%s`; results right: %s. (`%s`)' % (
              json.dumps((res.get('steps') or {}).get('import')), json.dumps((res.get('steps') or {}).get('run')),
              'yes' if imp['run_path']['ok'] else 'NO', imp['run_path']['command']))
        if res.get('heavy'):
            b('')
            b('Also recorded (slow to import, needed only for RabbitMQ): of pika, ansible.module_utils.urls and '
              'cryptography.x509, the Redis path has imported `%s` after the imports and `%s` after the run.' % (
                  json.dumps(res['heavy'].get('import')), json.dumps(res['heavy'].get('run'))))
        b('')
        eq = d['breakdown_equivalence']
        b('**breakdown() == task_name_of() per element**: %s, on %d kinds of elements (escaped, unicode, empty, '
          'missing and unterminated names, compact JSON, protocol 1 bodies, not JSON, not UTF-8) in %d random '
          'mixes.' % ('holds' if eq['passed'] else 'FAILS', eq['kinds'], eq['mixes']))
        b('')
        targets.append(('5', 'celery_queue_info / celery_queue import neither celery nor kombu (import and Redis run)',
                        'none' if imp['passed'] else 'imported', 'none imported', mark(imp['passed'])))
        ic = d['import_costs']
        az = d['ansiballz']
        b('**Where a module task\'s time goes** (fresh interpreter each time):')
        b('')
        b('| what | time |')
        b('|---|---|')
        b('| `python AnsiballZ_ping.py` (the payload Ansible built, run by hand; %d bytes) | %s |' % (
            az['ping']['bytes'], s(az['ping']['run'])))
        b('| `python AnsiballZ_celery_queue_info.py` (one Redis queue named; %d bytes) | %s |' % (
            az['celery_queue_info']['bytes'], s(az['celery_queue_info']['run'])))
        b('| import ansible.module_utils.basic (ping pays it too) | %s |' % s(ic['basic']))
        b('| import celery_queue_info (module + module_utils + libraries) | %s |' % s(ic['celery_queue_info']))
        b('| import redis alone | %s |' % s(ic['redis']))
        b('| import pika alone | %s |' % s(ic['pika']))
        b('| import ansible.module_utils.urls alone | %s |' % s(ic['urls']))
        b('')
        cum = ic.get('importtime_cumulative_s') or {}
        if cum:
            b('`python -X importtime` of celery_queue_info (one run, cumulative, includes the tool\'s overhead): %s.' % (
                ', '.join('%s %.0f ms' % (k.replace('ansible_collections.celeryops.fleet.plugins.', ''), v * 1000)
                          for k, v in sorted(cum.items(), key=lambda kv: -kv[1]))))
            b('')

    # -- 6 ----------------------------------------------------------------------------------------
    d = data['worker_info']
    b('## 6. celery_worker_info vs the celery CLI, on real workers')
    b('')
    if not d:
        b('Not measured: bench/worker_info.py failed (see the output of bench/run).')
        targets.append(('6', 'celery_worker_info playbook wall / celery CLI sequence wall', 'n/a', '≤ 0.25×',
                        '**not measured**'))
        targets.append(('6', 'celery_worker_info task − ping task', 'n/a', '≤ 0.3 s', '**not measured**'))
    else:
        sizes = [d['sizes'][k] for k in d['order']]
        first = sizes[0]
        b('Real Celery workers of the integration tests\' app (`tests/integration/app/fleet_tasks.py`) on Redis db %d, '
          'idle, consuming `%s`: %s, each started once per size with the harness\'s `Worker` '
          '(tests/integration/harness.py) and killed at the end. Ready (every worker logged ` ready.`) after %s. '
          'One of them:' % (
              lib.REDIS_DB, d['queue'], ' then '.join('%d (`%s` … `%s`)' % (z['n'], z['names'][0], z['names'][-1])
                                                      for z in sizes),
              ', '.join('%.1f s (%d)' % (z['start_seconds'], z['n']) for z in sizes)))
        b('')
        b('    %s' % first['worker_command'])
        b('')
        b('Per round the variants take turns: ansible.builtin.ping; celery_worker_info in one task '
          '(`expected_nodes` = the node names, `include: %s`, `timeout: %s`: it returns as soon as every node '
          'answered every section); the celery CLI asking for the same, one command after the other, timed as the '
          'whole sequence:' % (json.dumps(d['include']).replace('"', ''), d['timeout']))
        b('')
        b('    %s' % d['commands']['celery_cli'])
        b('')
        b('Each celery command starts a Python process with celery and the app, then collects replies until none has '
          'come for its `--timeout` (1 s by default): it is not told how many workers to expect.')
        b('')
        b('Checked every run: the module\'s `online` is exactly the node names, `missing`, `unexpected` and '
          '`duplicates` are empty and every node answered every section; every CLI command lists exactly the nodes '
          '(`->  <node>: OK`, `N nodes online.`). %d rounds per size (the other sections: %d; a round takes about '
          '20 s).' % (d['rounds'], lib.REPEAT))
        b('')
        b('| workers | variant | wall | task | command |')
        b('|---|---|---|---|---|')
        for z in sizes:
            vv = z['variants']
            b('| %d | ansible.builtin.ping | %s | %s | `%s` |' % (
                z['n'], s(vv['ping']['wall']), s(vv['ping']['task']), d['commands']['ping']))
            b('| %d | celery_worker_info, one task (replies in: %s; result %.1f kB) | %s | %s | `%s` |' % (
                z['n'], s(vv['worker_info']['elapsed']), (vv['worker_info'].get('result_bytes') or 0) / 1000.0,
                s(vv['worker_info']['wall']), s(vv['worker_info']['task']), z['command']))
            if z.get('beside'):
                b('| %d | the same playbook: ping (%s) and celery_worker_info (%s), in each order once a round | – | '
                  'see left | `%s` (and `ping_first=false`) |' % (
                      z['n'], s(z['beside']['ping']), s(z['beside']['worker_info']), z['beside_command']))
            b('| %d | celery CLI: status + inspect stats, active, reserved, active_queues | %s | – | the sequence '
              'above (%s) |' % (z['n'], s(vv['celery_cli']['wall']), ', '.join(
                  '`%s` %s' % (step['command'].replace('celery -A fleet_tasks ', ''), s(step['wall']))
                  for step in vv['celery_cli']['steps'])))
        b('')
        b('| workers | ratio / figure | value | target |')
        b('|---|---|---|---|')
        for z in sizes:
            vv = z['variants']
            wall_ratio = ratio(vv['worker_info']['wall'], vv['celery_cli']['wall'])
            apart = vv['worker_info']['task']['median'] - vv['ping']['task']['median']
            # The target's wording: both tasks in the same playbook.
            diff = z['beside']['worker_info']['median'] - z['beside']['ping']['median'] if z.get('beside') else apart
            # 3 decimals where 2 would print the limit itself for a figure on the other side of it
            shown_ratio = ('%.3f×' if round(wall_ratio, 2) == 0.25 else '%.2f×') % wall_ratio
            shown_diff = ('%+.3f s' if round(diff, 2) == 0.3 else '%+.2f s') % diff
            b('| %d | celery_worker_info wall / celery CLI sequence wall | **%s** (the CLI takes %.1f× as long) | '
              '≤ 0.25×: %s |' % (z['n'], shown_ratio, 1 / wall_ratio, mark(wall_ratio <= 0.25)))
            if z.get('beside'):
                b('| %d | celery_worker_info task − ping task, in the same playbook | **%s** | ≤ 0.3 s: %s |' % (
                    z['n'], shown_diff, mark(diff <= 0.3)))
            b('| %d | celery_worker_info task − ping task, each alone in its playbook | %+.2f s (%.2f×) | %s |' % (
                z['n'], apart, ratio(vv['worker_info']['task'], vv['ping']['task']),
                '(no target)' if z.get('beside') else '≤ 0.3 s: %s' % mark(apart <= 0.3)))
            targets.append(('6', 'celery_worker_info playbook wall / celery status + 4 × inspect, %d workers' % z['n'],
                            shown_ratio, '≤ 0.25×', mark(wall_ratio <= 0.25)))
            targets.append(('6', 'celery_worker_info task − ping task in the same playbook, %d workers' % z['n'],
                            shown_diff, '≤ 0.3 s', mark(diff <= 0.3)))
        b('')
        b('**Where the module\'s time goes.** The module\'s `gather()` run in the bench\'s process with the same '
          'parameters (no Ansible), `Control`\'s parts timed; and the module\'s import in a fresh interpreter, against '
          '`ansible.module_utils.basic` alone (which ping pays too):')
        b('')
        b('| workers | connect | request (all replies) | close | gather() in all | import basic | import celery_worker_info |')
        b('|---|---|---|---|---|---|---|')
        for z in sizes:
            a = z['inprocess']['as_is']
            b('| %d | %s | %s | %s | %s | %s | %s |' % (
                z['n'], s(a['connect'], 'ms', 0), s(a['request'], 'ms', 0), s(a['close'], 'ms', 0),
                s(a['gather'], 'ms', 0), s(z['imports']['basic'], 'ms', 0), s(z['imports']['module'], 'ms', 0)))
        b('')
        b('(`%s`; `%s`)' % (d['commands']['imports']['basic'], d['commands']['imports']['module']))
        b('')

    # -- findings ---------------------------------------------------------------------------------
    ri, ch, bd = data['redis_info'], data['checks'], data['breakdown']
    if ri and ch:
        vv = ri['variants']
        ping, full = vv['ping']['task']['median'], vv['queue_info']['task']['median']
        az = ch['ansiballz']
        by_hand = az['celery_queue_info']['run']['median'] - az['ping']['run']['median']
        text = ('Target 1 is missed by a fixed cost, not by the work. A Redis celery_queue_info task over %d queues '
                'costs %.2f s more than a ping task; its broker work (connect, discover, %d LLENs, unacked) is %.0f ms '
                'in process.' % (ri['n_queues'], full - ping, 4 * ri['n_queues'],
                                 vv['module_utils']['wall']['median'] * 1000))
        if 'queue_info_one' in vv:
            one = vv['queue_info_one']['task']['median']
            text += (' With one queue named the task already costs %.2f s over ping (%.2f×): the payloads run by hand '
                     '(AnsiballZ, no controller) differ by %.2f s, the module\'s imports and start-up; the other %.2f s '
                     'is the controller\'s share (building and shipping a larger payload, handling the result). Going '
                     'from 1 to %d queues adds about %.2f s: %.0f ms of broker work and %.2f s of producing and '
                     'handling a %.0f kB result (per-task times spread by ±0.2 s here: read these as estimates).' % (
                         one - ping, one / ping, by_hand, (one - ping) - by_hand, ri['n_queues'], full - one,
                         vv['module_utils']['wall']['median'] * 1000,
                         max(full - one - vv['module_utils']['wall']['median'], 0),
                         (vv['queue_info'].get('result_bytes') or 0) / 1000.0))
        if 'floor_redis' in vv:
            floor = vv['floor_redis']['task']['median']
            text += (' A bench-only module that does no broker work but imports redis-py and returns the same result '
                     'takes %.2f s (%.2f× a ping task): Ansible\'s cost for this result and redis-py\'s import. '
                     'celery_queue_info takes %.2f s more than that floor: shipping and compiling its own code, '
                     'its options, connecting and the broker work (%.0f ms of it in process).' % (
                         floor, floor / ping, full - floor, vv['module_utils']['wall']['median'] * 1000))
        heavy = ((ch['imports']['run_path'].get('result') or {}).get('heavy') or {}).get('run')
        if heavy:
            text += (' The Redis path still imports %s, which only the AMQP layer needs (pika alone %s, '
                     'ansible.module_utils.urls alone %s in fresh interpreters): import it only for amqp:// URLs.' % (
                         ', '.join(heavy), s(ch['import_costs']['pika']), s(ch['import_costs']['urls'])))
        elif heavy is not None:
            text += (' The Redis path imports neither pika nor ansible.module_utils.urls (checked in 5; they would '
                     'cost %s and %s alone). 1.5× leaves %.2f s (half a ping task) for everything the module does '
                     'beyond ping; redis-py\'s import alone takes %s (redis-py 8 also imports its asyncio client), '
                     'and Ansible ships and starts a larger module than ping.' % (
                         s(ch['import_costs']['pika']), s(ch['import_costs']['urls']), ping / 2,
                         s(ch['import_costs']['redis'])))
        findings.append(text)
    mm = ri and ri.get('module_main')
    if mm and mm.get('RedisQueues.bindings', [0])[0] > 1:
        calls, spent = mm['RedisQueues.bindings']
        findings.append(
            'celery_queue_info reads the binding sets %d times per run on Redis: discover() calls bindings() (a SCAN '
            'of the keyspace per binding prefix, then SMEMBERS of every set) and queue_states() calls it again. Over '
            '%d queues that is %.0f ms of %.0f ms in main(). Passing the first result on (or caching it on the '
            'RedisQueues object for the run) saves %.0f ms; in `_queues.py`/`_redis_queues.py`, not made here. Also '
            'in main(): exit_json takes %.0f ms to scrub no_log values (broker_url is no_log) from a %.0f kB result '
            'and print it; that is Ansible\'s and grows with the number of queues.' % (
                calls, ri['n_queues'], spent * 1000, mm['main() in all'][1] * 1000, spent * 1000 * (calls - 1) / calls,
                mm.get('AnsibleModule.exit_json (no_log scrubbing, JSON out)', [0, 0])[1] * 1000,
                mm.get('result bytes', [0, 0])[1] / 1000.0))
    if bd:
        findings.append(
            'breakdown() was parse-bound: task_name_of() per element (a regex, then a decode) ran the %s-message '
            'backlog at '
            '%s in process, while reading alone runs at %s. bench/ changed breakdown() (a tiny, local change in '
            '`_redis_queues.py`): find `"task": "` with bytes.find, count raw names, decode each distinct name once, '
            'and fall back to task_name_of() for anything else, so the result is the same (checked in section 5 '
            'and against the known counts every run). Now %s (%.2f× faster). Of that time, reading takes %.0f %% '
            '(%d LRANGEs of %d elements, %.1f ms median wait for each reply) and the Python loop over the elements '
            'the rest, %.1f µs per message.' % (
                '{:,}'.format(bd['n']), rate(bd['n'], bd['reference']), rate(bd['n'], bd['fetch']),
                rate(bd['n'], bd['inprocess']), ratio(bd['reference'], bd['inprocess']),
                100.0 * bd['fetch']['median'] / bd['inprocess']['median'], bd['lrange_calls_per_run'],
                bd['read_chunk'], bd['lrange_ms']['median'],
                1e6 * (bd['inprocess']['median'] - bd['fetch']['median']) / bd['n']))
        if 'one_at_a_time' in bd:
            findings.append(
                'breakdown() (and a filtered purge) now send the next LRANGE before counting the current chunk, so '
                'Redis builds and sends it meanwhile: %s against %s when each LRANGE waits for the counting of the '
                'one before (%.2f× faster, same data, same process). Every command still reads at most %d elements.'
                % (rate(bd['n'], bd['inprocess']), rate(bd['n'], bd['one_at_a_time']),
                   ratio(bd['one_at_a_time'], bd['inprocess']), bd['read_chunk']))
        if bd['module_task']['median'] > bd['inprocess']['median']:
            findings.append(
                'The module task adds %.2f s to the in-process breakdown (Ansible\'s fixed cost, see 1 and 5), '
                'which weighs %.0f %% at %s messages.' % (
                    bd['module_task']['median'] - bd['inprocess']['median'],
                    100 * (bd['module_task']['median'] - bd['inprocess']['median']) / bd['module_task']['median'],
                    '{:,}'.format(bd['n'])))
    wi = data['worker_info']
    if wi:
        z = [wi['sizes'][k] for k in wi['order']]

        def ms(x, key, part):
            return '%.0f ms' % (x['inprocess'][key][part]['median'] * 1000)
        x = z[0]
        a = x['inprocess']['as_is']
        text = ('celery_worker_info speaks Celery\'s remote-control protocol itself over redis-py (pika on RabbitMQ), '
                'without importing kombu: connecting takes %s, sending every section and collecting every reply %s, '
                'closing %s (%s).' % (
                    ', '.join(ms(y, 'as_is', 'connect') for y in z), ', '.join(ms(y, 'as_is', 'request') for y in z),
                    ', '.join(ms(y, 'as_is', 'close') for y in z), ', '.join('%d workers' % y['n'] for y in z)))
        vv = x['variants']
        diff = vv['worker_info']['task']['median'] - vv['ping']['task']['median']
        imports = x['imports']['module']['median'] - x['imports']['basic']['median']
        rest = diff - imports - a['connect']['median'] - a['request']['median'] - a['close']['median']
        text += (' Of the %.2f s the task costs over ping with %d workers, close() is %.2f s, the module\'s imports '
                 'beyond ansible.module_utils.basic (redis-py) %.2f s, connecting %.2f s, asking and collecting '
                 '%.2f s (of which up to %.1f s is the module\'s deliberate wait for duplicate node names: as long '
                 'again as the answers took), and %.2f s is not '
                 'accounted for by these (the controller\'s share for a larger payload and result, and noise: these are '
                 'estimates, per-task times spread).' % (
                     diff, x['n'], a['close']['median'], imports, a['connect']['median'], a['request']['median'],
                     wi.get('duplicate_grace', 0.1), rest))
        beside = x.get('beside')
        target_diff = diff   # what the target compares: the same playbook where it was measured
        if beside:
            target_diff = beside['worker_info']['median'] - beside['ping']['median']
            text += (' In the same playbook ping takes %.2f s and celery_worker_info %.2f s: %+.2f s. Each task '
                     'includes the controller building its module\'s payload (AnsiballZ), once per module and '
                     'playbook run: %.0f ms for ping, %.0f ms for celery_worker_info (timed in a fresh interpreter).' % (
                         beside['ping']['median'], beside['worker_info']['median'], target_diff,
                         x['payloads']['ping']['median'] * 1000, x['payloads']['worker_info']['median'] * 1000))
        if target_diff > 0.3:
            text += ' The 0.3 s target needs the imports, the collecting and the controller\'s share cut.'
        text += (' For the wall target: an ansible-playbook run of ping alone takes %s, so 0.25× of the CLI '
                 'sequence leaves %s for celery_worker_info beyond a ping playbook; it takes %s (%s).' % (
                     ', '.join('%.2f s' % y['variants']['ping']['wall']['median'] for y in z),
                     ', '.join('%.2f s' % (0.25 * y['variants']['celery_cli']['wall']['median']
                                           - y['variants']['ping']['wall']['median']) for y in z),
                     ', '.join('%.2f s' % (y['variants']['worker_info']['wall']['median']
                                           - y['variants']['ping']['wall']['median']) for y in z),
                     ', '.join('%d workers' % y['n'] for y in z)))
        findings.append(text)
    pg = data['purge']
    if pg and 'amqp' in pg:
        findings.append(
            'Purge: the module removes with LLEN+UNLINK per priority key on Redis and one queue.purge on RabbitMQ, '
            'like celery purge; the difference in time is Ansible\'s fixed cost against celery\'s CLI start-up '
            '(task %s vs celery purge %s on Redis, %s vs %s on RabbitMQ).' % (
                s(pg['redis']['celery_queue']['task']), s(pg['redis']['celery_purge']['wall']),
                s(pg['amqp']['celery_queue']['task']), s(pg['amqp']['celery_purge']['wall'])))

    w('## Targets')
    w('')
    w('| # | comparison | measured | target | |')
    w('|---|---|---|---|---|')
    for row in targets:
        w('| %s | %s | %s | %s | %s |' % row)
    w('')
    lines.extend(body)
    if findings:
        w('## Performance findings in the modules')
        w('')
        for f in findings:
            w('- ' + f)
        w('')
    w('## Reproduce')
    w('')
    w('    bench/run                 # full run, rewrites bench/RESULTS.md (about 7 minutes on 2 cores)')
    w('    BENCH_QUICK=1 bench/run   # smaller data, 3 runs each; writes bench/RESULTS.quick.md')
    w('')
    w('Other knobs: BENCH_REPEAT, BENCH_REDIS_DB (default 5), BENCH_VHOST (default celeryops-bench), '
      'BENCH_REDIS_QUEUES, BENCH_AMQP_QUEUES, BENCH_REDIS_PURGE, BENCH_AMQP_PURGE, BENCH_BACKLOG, '
      'BENCH_LOOP_KEYS=all, BENCH_SKIP_AMQP_PURGE=1, BENCH_WORKER_ROUNDS (default 3, quick 2), '
      'BENCH_WORKER_SIZES (default 3,12), BENCH_RESULTS (output file).')
    w('')
    target = os.environ.get('BENCH_RESULTS') or os.path.join(lib.BENCH, 'RESULTS.quick.md' if lib.QUICK else 'RESULTS.md')
    with open(target, 'w') as f:
        f.write('\n'.join(lines))
    sys.stderr.write('==> wrote %s\n' % os.path.relpath(target, lib.ROOT))
    missing = [name for name in SECTIONS if data[name] is None]
    return 1 if missing else 0


if __name__ == '__main__':
    sys.exit(main())
