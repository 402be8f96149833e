"""1. celery_queue_info over many Redis queues vs a redis-cli loop vs a bare ping task.

1,000 queues (BENCH_QUICK: 200) in kombu's layout: 3 ready messages each on the bare key,
every 5th queue one more on priority step 3, kombu's binding sets, and 1 message in 10
queues held in `unacked` as a worker would. Each variant is a separate ansible-playbook run
with the same settings; the variants take turns, REPEAT rounds.
"""

import json
import os
import random
import time

import lib

N_QUEUES = int(os.environ.get('BENCH_REDIS_QUEUES') or (200 if lib.QUICK else 1000))
PER_QUEUE = 3


def populate():
    lib.reset_redis()
    client = lib.redis_client()
    envelopes = lib.Envelopes()
    rnd = random.Random(7)
    names = ['bench.q%04d' % i for i in range(N_QUEUES)]
    pipe = client.pipeline(transaction=False)
    ready = unacked = 0
    for i, name in enumerate(names):
        pipe.lpush(name, *[envelopes.make(name, envelopes.task_for(rnd)) for _i in range(PER_QUEUE)])
        ready += PER_QUEUE
        if i % 5 == 0:
            pipe.lpush(lib.key_of(name, 3), envelopes.make(name, envelopes.task_for(rnd), 3))
            ready += 1
        if i % 10 == 0:
            # kombu's unacked hash: delivery tag -> [message, exchange, routing_key]; the index zset by time.
            message = json.loads(envelopes.make(name, envelopes.task_for(rnd)))
            tag = message['properties']['delivery_tag']
            pipe.hset('unacked', tag, json.dumps([message, '', name]))
            pipe.zadd('unacked_index', {tag: time.time()})
            unacked += 1
        envelopes.bind(pipe, name)
        if len(pipe) > 2000:
            pipe.execute()
    pipe.execute()
    return names, ready, unacked


def count_values(value):
    """The values remove_values() walks in a result: every container and every scalar in it."""
    if isinstance(value, dict):
        return 1 + sum(count_values(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return 1 + sum(count_values(v) for v in value)
    return 1


def module_main_inprocess(result_file, args=None):
    """celery_queue_info's main() run in this process as AnsiballZ would run it (ansible-core 2.19's
    parameter hand-over), with the RedisQueues calls and exit_json timed (and inside it the no_log scrub,
    remove_values, and on ansible-core 2.19+ the JSON encoding): where the module's own time goes for this
    many queues. ``args``: module options besides broker_url. Writes its result (without `invocation`) to
    ``result_file`` for the floor variants. Returns {what: [calls, seconds]} or None if it cannot run."""
    import contextlib
    import io
    from ansible.module_utils import basic
    lib.module_utils()  # the collection on sys.path
    from ansible_collections.celeryops.fleet.plugins.module_utils import _redis_queues
    from ansible_collections.celeryops.fleet.plugins.modules import celery_queue_info
    spent = {}
    saved = []

    def timed_method(owner, name, label):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                entry = spent.setdefault(label, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - start
        saved.append((owner, name, real))
        setattr(owner, name, wrapper)
    for name in ('discover', 'bindings', 'depths', 'unacked_by_queue'):
        timed_method(_redis_queues.RedisQueues, name, 'RedisQueues.' + name)
    timed_method(basic.AnsibleModule, 'exit_json', 'AnsibleModule.exit_json (no_log scrubbing, JSON out)')
    timed_method(basic, 'remove_values', 'remove_values (the no_log scrub, in exit_json)')
    if hasattr(basic.AnsibleModule, '_record_module_result'):  # ansible-core 2.19+
        timed_method(basic.AnsibleModule, '_record_module_result', 'JSON encoding and printing (in exit_json)')
    out = io.StringIO()
    try:
        basic._ANSIBLE_ARGS = json.dumps({'ANSIBLE_MODULE_ARGS': dict({'broker_url': lib.REDIS_URL}, **(args or {}))}).encode()
        basic._ANSIBLE_PROFILE = 'legacy'
        start = time.perf_counter()
        with contextlib.redirect_stdout(out):
            try:
                celery_queue_info.main()
            except SystemExit:
                pass
        spent['main() in all'] = [1, time.perf_counter() - start]
        result = json.loads(out.getvalue())
        if len(result.get('queues') or []) != N_QUEUES:
            raise RuntimeError('main() returned %r' % out.getvalue()[:300])
        spent['result bytes'] = [1, len(out.getvalue())]
        spent['result values'] = [1, count_values(result)]
        result.pop('invocation', None)
        with open(result_file, 'w') as f:
            json.dump(result, f)
        return spent
    except Exception as exc:  # noqa: BLE001 - a diagnostic: report why and go on
        lib.log('module main() in process: %s' % exc)
        return None
    finally:
        for owner, name, real in saved:
            setattr(owner, name, real)
        basic._ANSIBLE_ARGS = None


def main():
    names, ready, unacked = populate()
    one = names[0]  # 3 + 1 ready (step 3), 1 unacked: the first queue gets both extras
    queue_file = os.path.join(lib.OUT, 'redis-queues.txt')
    with open(queue_file, 'w') as f:
        f.write('\n'.join(names) + '\n')
    # One redis-cli process fed every LLEN (all four keys per queue) on stdin: the best a shell can do.
    stdin_file = os.path.join(lib.OUT, 'redis-llen-all.txt')
    with open(stdin_file, 'w') as f:
        for name in names:
            for step in (0, 3, 6, 9):
                f.write('LLEN "%s"\n' % (name + ('\\x06\\x16%d' % step if step else '')))
    with open(stdin_file, 'rb') as f:
        stdin_data = f.read()

    # Run first: it records the result the floor variants return.
    result_file = os.path.join(lib.OUT, 'queue-info-result.json')
    module_main = module_main_inprocess(result_file)
    floor = dict(broker_url=lib.REDIS_URL, result_file=result_file)

    loop_which = os.environ.get('BENCH_LOOP_KEYS', 'base')
    loop_cmd = '%s %d %s %s' % (os.path.join(lib.BENCH, 'llen_loop.sh'), lib.REDIS_DB, queue_file, loop_which)
    variants = [
        ('ping', 'ping.yml', None),
        ('queue_info', 'queue_info.yml', {'broker_url': lib.REDIS_URL}),
        ('queue_info_one', 'queue_info.yml', {'broker_url': lib.REDIS_URL, 'queues': [one]}),
        ('llen_loop', 'shell.yml', {'cmd': loop_cmd}),
    ]
    if module_main:
        # The floor: what Ansible charges for this result alone, then with redis-py imported.
        variants += [('floor', 'result_floor.yml', dict(floor, import_redis=False)),
                     ('floor_redis', 'result_floor.yml', dict(floor, import_redis=True))]
    results = dict((name, dict(wall=[], task=[], checks=[])) for name, _p, _v in variants)
    results['redis_cli_stdin'] = dict(wall=[], checks=[])
    results['module_utils'] = dict(wall=[], checks=[])
    params = lib.module_params(lib.REDIS_URL)

    for round_ in range(lib.REPEAT):
        for name, playbook, extra in variants:
            wall, task = lib.run_playbook(playbook, extra)
            results[name]['wall'].append(wall)
            results[name]['task'].append(task['seconds'])
            results[name]['checks'].append(task['summary'])
            if name == 'queue_info_one':
                got = task['summary']
                if (got['queues'], got['messages'], got['unacked']) != (1, PER_QUEUE + 1, 1):
                    raise AssertionError('celery_queue_info on %s saw %r' % (one, got))
            elif name == 'queue_info' or name.startswith('floor'):
                got = task['summary']
                if (got['queues'], got['messages'], got['unacked']) != (N_QUEUES, ready, unacked):
                    raise AssertionError('%s saw %r, expected %d queues, %d ready, %d unacked'
                                         % (name, got, N_QUEUES, ready, unacked))
            if name == 'llen_loop' and task['summary'].get('stdout_lines') != N_QUEUES * (4 if loop_which == 'all' else 1):
                raise AssertionError('the loop printed %r lines' % task['summary'])
        seconds, out = lib.timed(['redis-cli', '-n', str(lib.REDIS_DB)], stdin=stdin_data)
        counts = [int(x) for x in out.split()]
        if len(counts) != 4 * N_QUEUES or sum(counts) != ready:
            raise AssertionError('redis-cli read %d counts summing to %d' % (len(counts), sum(counts)))
        results['redis_cli_stdin']['wall'].append(seconds)
        # The module's own work in this process: connect, discover, LLEN x4 per queue, unacked.
        seconds, states = lib.describe_in_process(params)
        results['module_utils']['wall'].append(seconds)
        if sum(s['messages'] for s in states) != ready:
            raise AssertionError('module_utils counted %d' % sum(s['messages'] for s in states))
        lib.log('round %d/%d: %s' % (round_ + 1, lib.REPEAT, ', '.join(
            '%s %.2fs' % (k, v['wall'][-1]) for k, v in results.items())))

    out = dict(n_queues=N_QUEUES, ready=ready, unacked=unacked, loop_keys=loop_which, variants={},
               module_main=module_main)
    for name, data in results.items():
        entry = dict(wall=lib.summary(data['wall']))
        if data.get('task'):
            entry['task'] = lib.summary(data['task'])
        if data.get('checks'):
            entry['result_bytes'] = data['checks'][-1].get('result_bytes')
        out['variants'][name] = entry
    out['variants']['ping']['command'] = lib.playbook_command('ping.yml')
    out['variants']['queue_info']['command'] = lib.playbook_command('queue_info.yml', {'broker_url': lib.REDIS_URL})
    out['variants']['queue_info_one']['command'] = lib.playbook_command(
        'queue_info.yml', {'broker_url': lib.REDIS_URL, 'queues': [one]})
    out['variants']['llen_loop']['command'] = lib.playbook_command('shell.yml', {'cmd': loop_cmd})
    out['variants']['llen_loop']['inner_command'] = loop_cmd
    for name, _playbook, extra in variants:
        if name.startswith('floor'):
            out['variants'][name]['command'] = lib.playbook_command('result_floor.yml', extra)
    out['variants']['redis_cli_stdin']['command'] = 'redis-cli -n %d < %s   # %d lines like: LLEN "bench.q0000\\x06\\x163"' % (
        lib.REDIS_DB, stdin_file, 4 * N_QUEUES)
    out['variants']['module_utils']['command'] = ('in process (bench/redis_info.py): open_queues(); '
                                                  'queue_states(queues) (lib.describe_in_process)')
    lib.write_result('redis_info', out)
    lib.reset_redis()


if __name__ == '__main__':
    main()
