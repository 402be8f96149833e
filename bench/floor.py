"""1b. Per task, side by side in one run: ping and celery_queue_info over 1,000 Redis queues (section 1's data),
and the floor under celery_queue_info, under the `linear` strategy and under Mitogen's `mitogen_linear`.

A task's cost is what one more such task adds to a playbook: each variant is a playbook of N identical tasks
(bench/playbooks/per_task_*.yml, N = 10), and per round its cost per task is (its wall - the wall of the empty
playbook per_task_empty.yml, run in the same round under the same strategy) / N. The figure is the median over
the rounds [min-max]; within a round the variants take turns, one strategy after the other.

Variants, under each strategy:
- ansible.builtin.ping;
- celery_queue_info, queues discovered, its default `priorities` (auto: maps only for queues that use a
  priority step other than 0), and the same with `priorities: all` (every map, the module's result before);
- the floor with redis-py: bench/playbooks/library/bench_result_floor.py returning the result celery_queue_info
  printed in process (recorded first), after importing redis-py: what Ansible charges for that result, plus
  redis-py's import. celery_queue_info's task minus this is the module's own share.

Mitogen comes from the virtualenv (requirements-dev.txt): if ansible_mitogen does not import, the section says
so and measures `linear` alone. An untimed warm-up round runs every playbook once with the bench_timer callback
and checks every task's result (1,000 queues, the ready and unacked counts). Timed runs use no callback of ours:
the wall of the whole ansible-playbook process, as a user sees it.
"""

import importlib.util
import os
import platform

import lib
import redis_info

N_TASKS = 10  # the tasks in each bench/playbooks/per_task_*.yml (YAML anchor and aliases)
ROUNDS = int(os.environ.get('BENCH_FLOOR_ROUNDS') or (3 if lib.QUICK else max(lib.REPEAT, 7)))
INPROCESS_RUNS = 5


def mitogen_strategy_dir():
    """The directory of Mitogen's strategy plugins in this interpreter's environment, or None."""
    spec = importlib.util.find_spec('ansible_mitogen')
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], 'plugins', 'strategy')
    return path if os.path.isfile(os.path.join(path, 'mitogen_linear.py')) else None


def strategy_env(strategy, plugins):
    if strategy == 'linear':
        return {'ANSIBLE_STRATEGY': 'linear'}
    return {'ANSIBLE_STRATEGY': strategy, 'ANSIBLE_STRATEGY_PLUGINS': plugins}


def version_of(dist):
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_tasks(name, tasks, expected):
    """The warm-up run's records: N ok tasks, each (for the queue variants) with the expected counts."""
    if len(tasks) != N_TASKS:
        raise AssertionError('%s: %d tasks ran, expected %d' % (name, len(tasks), N_TASKS))
    if expected is None:
        return
    for task in tasks:
        got = task['summary']
        if (got.get('queues'), got.get('messages'), got.get('unacked')) != expected:
            raise AssertionError('%s saw %r, expected (queues, ready, unacked) %r' % (name, got, expected))


def run_wall(playbook, extra, env):
    """One timed ansible-playbook run without our callback: wall seconds; checks that N tasks were ok."""
    seconds, out = lib.timed(lib.playbook_argv(playbook, extra), env=env)
    text = out.decode('utf-8', 'replace')
    if playbook != 'per_task_empty.yml' and ('ok=%d ' % N_TASKS not in text or 'failed=0' not in text):
        raise RuntimeError('%s: the recap does not say ok=%d failed=0: %s' % (playbook, N_TASKS, text[-600:]))
    return seconds


def check_data(client, keys):
    """After each round: the data is still the benchmark's (the timed runs do not check their results)."""
    if not client.exists(lib.MARKER) or client.dbsize() != keys:
        raise RuntimeError('Redis db %d changed during the timed runs (%d keys, %d expected; marker %s): '
                           'someone else uses it? choose another with BENCH_REDIS_DB'
                           % (lib.REDIS_DB, client.dbsize(), keys, 'present' if client.exists(lib.MARKER) else 'gone'))


def inprocess(result_file, args):
    """celery_queue_info's main() in process, INPROCESS_RUNS times (bench/redis_info.py): the median of each
    timed call, the result's size and number of values."""
    runs = [redis_info.module_main_inprocess(result_file, args) for _run in range(INPROCESS_RUNS)]
    if not all(runs):
        return None
    out = {}
    for label in runs[0]:
        out[label] = dict(calls=runs[0][label][0], seconds=lib.summary(run[label][1] for run in runs))
    return out


def main():
    names, ready, unacked = redis_info.populate()
    expected = (len(names), ready, unacked)
    plugins = mitogen_strategy_dir()
    strategies = ['linear'] + (['mitogen_linear'] if plugins else [])
    result_file = os.path.join(lib.OUT, 'floor-queue-info-result.json')
    # In process first: where the module's time goes, with the default and with priorities=all; the default's
    # result is the one the floor returns.
    calls = dict(all=inprocess(result_file + '.all', {'priorities': 'all'}), default=inprocess(result_file, None))
    variants = [
        ('empty', 'per_task_empty.yml', None),
        ('ping', 'per_task_ping.yml', None),
        ('queue_info', 'per_task_queue_info.yml', {'broker_url': lib.REDIS_URL}),
        ('queue_info_all', 'per_task_queue_info.yml', {'broker_url': lib.REDIS_URL, 'priorities': 'all'}),
        ('floor_redis', 'per_task_floor.yml', {'broker_url': lib.REDIS_URL, 'result_file': result_file,
                                               'import_redis': True}),
    ]
    checks = {'queue_info': expected, 'queue_info_all': expected, 'floor_redis': expected}

    # Warm-up, untimed: every playbook once per strategy with the bench_timer callback, every task checked.
    # Its records also split a task's cost: the first task of a playbook pays for starting the connection and
    # (under Mitogen) for loading the module; the later ones show what each further task costs.
    result_bytes = {}
    warmup = {}
    for strategy in strategies:
        for name, playbook, extra in variants:
            if name == 'empty':
                continue
            _seconds, tasks = lib.run_playbook_tasks(playbook, extra, strategy_env(strategy, plugins))
            check_tasks('%s under %s' % (name, strategy), tasks, checks.get(name))
            result_bytes[name] = tasks[-1]['summary'].get('result_bytes')
            warmup['%s/%s' % (strategy, name)] = dict(first=tasks[0]['seconds'],
                                                      later=lib.summary(task['seconds'] for task in tasks[1:]))

    client = lib.redis_client()
    keys = client.dbsize()
    walls = dict(((strategy, name), []) for strategy in strategies for name, _p, _e in variants)
    for round_ in range(ROUNDS):
        for strategy in strategies:
            env = strategy_env(strategy, plugins)
            for name, playbook, extra in variants:
                walls[(strategy, name)].append(run_wall(playbook, extra, env))
        check_data(client, keys)
        lib.log('round %d/%d: %s' % (round_ + 1, ROUNDS, ', '.join(
            '%s/%s %.2fs' % (strategy, name, values[-1]) for (strategy, name), values in walls.items())))

    out = dict(n_queues=len(names), ready=ready, unacked=unacked, n_tasks=N_TASKS, rounds=ROUNDS,
               strategies=strategies, mitogen=version_of('mitogen') if plugins else None,
               ansible_core=version_of('ansible-core'), python=platform.python_version(),
               load_end='%.2f %.2f %.2f' % os.getloadavg(), inprocess=calls, result_bytes=result_bytes, warmup=warmup,
               variants={}, commands={})
    for strategy in strategies:
        empty = walls[(strategy, 'empty')]
        for name, playbook, extra in variants:
            wall = walls[(strategy, name)]
            entry = dict(wall=lib.summary(wall))
            if name != 'empty':
                entry['per_task'] = lib.summary((w - e) / N_TASKS for w, e in zip(wall, empty))
            out['variants']['%s/%s' % (strategy, name)] = entry
    for name, playbook, extra in variants:
        out['commands'][name] = lib.show(lib.playbook_argv(playbook, extra))
    out['mitogen_env'] = ('ANSIBLE_STRATEGY=mitogen_linear ANSIBLE_STRATEGY_PLUGINS=$(python -c "import os, '
                          'ansible_mitogen; print(os.path.dirname(ansible_mitogen.__file__))")/plugins/strategy')
    lib.write_result('floor', out)
    lib.reset_redis()


if __name__ == '__main__':
    main()
