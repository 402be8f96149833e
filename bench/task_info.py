"""8. Finding tasks: celery_task_info vs `celery inspect query_task` + a redis-cli scan of the queue.

One Redis queue, bench.tasks, holds 10,000 ready messages (BENCH_TASK_INFO_MESSAGES; BENCH_QUICK: 2,000), real
Celery envelopes of the TASK_MIX names (lib.Envelopes, no priorities), and 3 real workers of the integration tests'
app (threads pool, concurrency 1, prefetch 2) consume bench.tasks.run, where 6 fleet_tasks.sleep(600) were sent:
each worker runs one (active) and holds one (reserved). Two lookups, each done both ways, taking turns in every round:

- by id: one queued id (the message that runs last), one active and one reserved. celery_task_info (ids, queues
  both, expected_nodes the 3 nodes, timeout 5) against `celery -A fleet_tasks inspect query_task <ids>` (finds only
  what workers hold) followed by `redis-cli --raw lrange bench.tasks 0 -1 | grep -n -F -e <id> ...`;
- by name: media.tasks.resize_image (about 8 % of the queue, none on the workers). celery_task_info (task_names)
  against `celery -A fleet_tasks inspect active` and `inspect reserved` (query_task takes ids only) followed by
  `redis-cli --raw lrange bench.tasks 0 -1 | jq -r 'select(.headers.task == "...") | .headers.id'`.

Every run is checked: the module finds each id where it is (queued, active, reserved) and exactly the queued
messages of the name, no node missing; the CLI sequence prints the ids it should. Fewer rounds than the other
sections (BENCH_TASK_INFO_ROUNDS; 3, quick 2). Runs after bench/report.py, like section 7, and writes its own
section into the report (BENCH_RESULTS, else bench/RESULTS.md), leaving the other sections as they are.
"""

import json
import os
import signal
import sys
import tempfile
import time

import lib

N = int(os.environ.get('BENCH_TASK_INFO_MESSAGES') or (2000 if lib.QUICK else 10000))
ROUNDS = int(os.environ.get('BENCH_TASK_INFO_ROUNDS') or min(lib.REPEAT, 2 if lib.QUICK else 3))
QUEUE = 'bench.tasks'
RUN_QUEUE = 'bench.tasks.run'
NAME = 'media.tasks.resize_image'
NODES = ['bench%d@tasks' % i for i in range(1, 4)]
TIMEOUT = 5
SECTION = '## 8. Finding tasks: celery_task_info vs celery inspect query_task and redis-cli'


def loadavg():
    with open('/proc/loadavg') as handle:
        return ' '.join(handle.read().split()[:3])


def celery(*words):
    return [os.path.join(os.path.dirname(sys.executable), 'celery'), '-A', 'fleet_tasks'] + list(words)


def redis_scan(filter_command):
    """The queue read whole by redis-cli, through a filter, as one shell pipeline."""
    return 'redis-cli -n %d --raw lrange %s 0 -1 | %s' % (lib.REDIS_DB, QUEUE, filter_command)


def grep_ids(ids):
    return 'grep -n -F %s' % ' '.join('-e %s' % i for i in ids)


def jq_name(name):
    return "jq -r 'select(.headers.task == \"%s\") | .headers.id'" % name


# -- workers -----------------------------------------------------------------------------------

def worker_tasks():
    """(active ids, reserved ids) of the workers, as `celery inspect --json` reports them."""
    env = {'CELERY_BROKER_URL': lib.REDIS_URL}
    out = {}
    for what in ('active', 'reserved'):
        _seconds, text = lib.timed(celery('inspect', what, '--json', '--timeout', '5'), env=env, cwd=lib.APP_DIR)
        replies = json.loads(text.decode('utf-8').strip().splitlines()[-1])
        out[what] = sorted(task['id'] for tasks in replies.values() for task in tasks)
    return out['active'], out['reserved']


def occupy_workers(client):
    """Send 6 long fleet_tasks.sleep to the workers, and wait until each runs one and holds one."""
    sys.path.insert(0, lib.APP_DIR)
    from fleet_tasks import make_app
    app = make_app(lib.REDIS_URL)
    try:
        sent = [app.send_task('fleet_tasks.sleep', args=(600,), queue=RUN_QUEUE).id for _i in range(2 * len(NODES))]
    finally:
        app.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not client.llen(RUN_QUEUE):
            active, reserved = worker_tasks()
            if len(active) == len(NODES) and len(reserved) == len(NODES) and sorted(active + reserved) == sorted(sent):
                return active, reserved
        time.sleep(1)
    raise AssertionError('the workers never ran %d and held %d of %r' % (len(NODES), len(NODES), sent))


# -- the module --------------------------------------------------------------------------------

def module_vars(**selector):
    return dict(selector, broker_url=lib.REDIS_URL, queues=[QUEUE, RUN_QUEUE], expected_nodes=NODES,
                reply_timeout=TIMEOUT)


def run_module(selector, check):
    wall, tasks = lib.run_playbook_tasks('task_info.yml', module_vars(**selector))
    by_name = dict((task['name'], task) for task in tasks)
    check(by_name['Say what was found']['summary']['msg'])
    return wall, by_name['Find the tasks']['seconds']


# -- the CLI -----------------------------------------------------------------------------------

def run_cli(celery_steps, pipeline, check):
    """The celery commands, then the redis-cli pipeline, one after the other: (seconds in all, of the scan)."""
    env = {'CELERY_BROKER_URL': lib.REDIS_URL}
    outputs = []
    start = time.perf_counter()
    for step in celery_steps:
        _seconds, out = lib.timed(celery(*step), env=env, cwd=lib.APP_DIR)
        outputs.append(out.decode('utf-8', 'replace'))
    scan, out = lib.timed(['bash', '-o', 'pipefail', '-c', pipeline])
    outputs.append(out.decode('utf-8', 'replace'))
    total = time.perf_counter() - start
    check(outputs)
    return total, scan


def cli_command(celery_steps, pipeline):
    return 'cd tests/integration/app && export CELERY_BROKER_URL=%s && %s && %s' % (
        lib.REDIS_URL, ' && '.join('celery -A fleet_tasks %s' % ' '.join(step) for step in celery_steps), pipeline)


# -- the run -----------------------------------------------------------------------------------

def bench(logdir):
    client = lib.redis_client()
    envelopes = lib.Envelopes()
    counts, size = lib.fill_backlog(client, envelopes, QUEUE, N, step_share=0, seed=1)
    raw = client.lrange(QUEUE, 0, -1)
    if len(raw) != N:
        raise AssertionError('%s holds %d messages, expected %d' % (QUEUE, len(raw), N))
    queued_id = json.loads(raw[0])['headers']['id']  # LPUSHed last: runs last, the end of the scan for a worker
    named = [json.loads(r)['headers']['id'] for r in raw if json.loads(r)['headers']['task'] == NAME]
    if len(named) != counts[NAME]:
        raise AssertionError('%d messages of %s, fill_backlog says %d' % (len(named), NAME, counts[NAME]))
    start = time.perf_counter()
    workers = lib.start_workers(NODES, RUN_QUEUE, logdir, prefetch=2)
    lib.log('3 workers ready in %.1f s' % (time.perf_counter() - start))
    try:
        active, reserved = occupy_workers(client)
        ids = [queued_id, active[0], reserved[0]]
        expected_where = {queued_id: 'queued', active[0]: 'active', reserved[0]: 'reserved'}

        def check_ids(found):
            if found['where'] != expected_where or found['missing'] or found['not_found']:
                raise AssertionError('celery_task_info by id found %r, expected %r' % (found, expected_where))

        def check_name(found):
            if int(found['ids']) != len(named) or found['counts']['total'] != len(named) or found['missing']:
                raise AssertionError('celery_task_info by name found %r, expected %d queued' % (found, len(named)))

        id_steps = [('inspect', 'query_task', active[0], reserved[0], queued_id)]
        id_pipeline = redis_scan(grep_ids(ids))
        name_steps = [('inspect', 'active'), ('inspect', 'reserved')]
        name_pipeline = redis_scan(jq_name(NAME))

        def check_cli_ids(outputs):
            workers_said, scan = '\n'.join(outputs[:-1]), outputs[-1]
            if active[0] not in workers_said or reserved[0] not in workers_said or queued_id in workers_said:
                raise AssertionError('inspect query_task said %r' % workers_said[-1000:])
            lines = scan.splitlines()
            if len(lines) != 1 or queued_id not in lines[0]:
                raise AssertionError('the scan found %d lines, expected the one of %s' % (len(lines), queued_id))

        def check_cli_name(outputs):
            workers_said, scan = '\n'.join(outputs[:-1]), outputs[-1]
            if NAME in workers_said or sorted(scan.split()) != sorted(named):
                raise AssertionError('by name, the CLI found %d ids, expected %d' % (len(scan.split()), len(named)))

        results = dict((key, dict(wall=[], task=[])) for key in ('module_ids', 'module_name'))
        results.update((key, dict(wall=[], scan=[])) for key in ('cli_ids', 'cli_name'))
        loads = [loadavg()]
        for round_ in range(ROUNDS):
            wall, task = run_module(dict(ids=ids), check_ids)
            results['module_ids']['wall'].append(wall)
            results['module_ids']['task'].append(task)
            wall, scan = run_cli(id_steps, id_pipeline, check_cli_ids)
            results['cli_ids']['wall'].append(wall)
            results['cli_ids']['scan'].append(scan)
            wall, task = run_module(dict(task_names=[NAME]), check_name)
            results['module_name']['wall'].append(wall)
            results['module_name']['task'].append(task)
            wall, scan = run_cli(name_steps, name_pipeline, check_cli_name)
            results['cli_name']['wall'].append(wall)
            results['cli_name']['scan'].append(scan)
            loads.append(loadavg())
            lib.log('task_info round %d/%d: %s (load %s)' % (round_ + 1, ROUNDS, ', '.join(
                '%s %.2fs' % (k, v['wall'][-1]) for k, v in sorted(results.items())), loads[-1]))
    finally:
        lib.kill_workers(workers)
    out = dict(n=N, mean_bytes=size, name=NAME, named=len(named), counts=counts, rounds=ROUNDS, nodes=NODES,
               queue=QUEUE, run_queue=RUN_QUEUE, timeout=TIMEOUT, loads=loads, db=lib.REDIS_DB,
               when=time.strftime('%Y-%m-%d %H:%M', time.gmtime()),
               commands=dict(module_ids=lib.playbook_command('task_info.yml', module_vars(ids=ids)),
                             module_name=lib.playbook_command('task_info.yml', module_vars(task_names=[NAME])),
                             cli_ids=cli_command(id_steps, id_pipeline),
                             cli_name=cli_command(name_steps, name_pipeline)),
               variants=dict((key, dict((k, lib.summary(v)) for k, v in data.items())) for key, data in results.items()))
    return out


def render(d):
    v = d['variants']

    def s(summary):
        return '%.2f s [%.2f–%.2f]' % (summary['median'], summary['min'], summary['max'])
    lines = [SECTION, '',
             'Written by `bench/task_info.py` on %s (UTC); load average %s before the first round, %s after the last '
             '(other sessions share the machine: read the figures with it). One Redis queue, `%s` (Redis db %d, '
             'emptied after), holds %s ready messages (real Celery envelopes of the task mix of sections 3 and 4, '
             '%.0f bytes each on average); 3 real workers of the test app (`%s`, threads pool, concurrency 1, '
             'prefetch 2) consume `%s`, where 6 `fleet_tasks.sleep(600)` were sent: each worker runs one and holds '
             'one reserved. Median [min–max] of %d rounds; the variants take turns in each round, on the same data.'
             % (d['when'], d['loads'][0], d['loads'][-1], d['queue'], d['db'], format(d['n'], ','), d['mean_bytes'],
                ', '.join(d['nodes']), d['run_queue'], d['rounds']), '',
             '- **by id**: 3 ids, the queued message that runs last (the end of the queue), one active and one '
             'reserved task. The CLI: `celery inspect query_task` finds only what workers hold, so the queue is '
             'scanned too.',
             '- **by name**: `%s`, %s queued messages, none on the workers. `inspect query_task` takes ids only: the '
             'CLI lists the workers\' active and reserved tasks, then scans the queue with jq.' % (
                 d['name'], format(d['named'], ',')),
             '',
             'Checked every run: the module finds each id where it is (queued, active, reserved) and exactly the '
             'queued messages of the name, no expected node missing; `query_task` prints the active and the reserved '
             'id, the scan the queued one (one line), and the jq scan exactly the ids of the name.', '',
             '| lookup | variant | wall | task | command |', '|---|---|---|---|---|']
    for lookup, label in (('ids', 'by id'), ('name', 'by name')):
        module, cli = v['module_' + lookup], v['cli_' + lookup]
        lines.append('| %s | celery_task_info, one task | %s | %s | `%s` |' % (
            label, s(module['wall']), s(module['task']), d['commands']['module_' + lookup]))
        lines.append('| %s | celery CLI + redis-cli (of which the redis-cli scan: %s) | %s | – | `%s` |' % (
            label, s(cli['scan']), s(cli['wall']), d['commands']['cli_' + lookup]))
    lines += ['', '| lookup | ratio | value |', '|---|---|---|']
    for lookup, label in (('ids', 'by id'), ('name', 'by name')):
        module, cli = v['module_' + lookup], v['cli_' + lookup]
        lines.append('| %s | celery_task_info playbook wall / CLI sequence wall | %.2f× (the CLI takes %.1f× as long) |'
                     % (label, module['wall']['median'] / cli['wall']['median'],
                        cli['wall']['median'] / module['wall']['median']))
    lines += ['', 'The playbook also prints what was found in a debug task (for the checks); its wall includes it and '
              'ansible-playbook\'s start-up, its task column is the module task alone. Each celery command starts '
              'Python with celery and the app and waits out its `--timeout` (1 s) for replies; the module returns '
              'once the 3 expected nodes answered.', '']
    for lookup, label in (('ids', 'By id'), ('name', 'By name')):
        module, cli = v['module_' + lookup], v['cli_' + lookup]
        faster = 'the module' if module['wall']['median'] < cli['wall']['median'] else 'the CLI sequence'
        lines.append('- %s, %s is faster end to end: the module task alone takes %.2f s and its playbook %.2f s; the '
                     'CLI sequence %.2f s, of which the redis-cli scan of the %s messages %.2f s and the celery '
                     'command%s the rest.' % (
                         label, faster, module['task']['median'], module['wall']['median'], cli['wall']['median'],
                         format(d['n'], ','), cli['scan']['median'], '' if lookup == 'ids' else 's'))
    lines += ['- The module\'s answer also says where each task is (queued with its position in run order, or the '
              'node holding it, active or reserved) in one result; the CLI gives the workers\' replies and the scan\'s '
              'line numbers (the LRANGE order, the reverse of run order) separately.', '']
    return '\n'.join(lines)


def main():
    # SIGTERM ends the run through the finally clauses, which kill the workers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    lib.reset_redis()
    logdir = tempfile.mkdtemp(prefix='workers-', dir=lib.OUT)
    try:
        data = bench(logdir)
    finally:
        lib.reset_redis()
    lib.write_result('task_info', data)
    lib.write_section(SECTION, render(data))


if __name__ == '__main__':
    main()
