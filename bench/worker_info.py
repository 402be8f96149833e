"""6. celery_worker_info vs the celery CLI (`celery status` + four `celery inspect`) on real workers.

Real Celery workers of the integration tests' app (tests/integration/app/fleet_tasks.py) on the
bench Redis db: 3, then 12 (threads pool, concurrency 1, --without-mingle --without-gossip, node
names bench1@fleet...), started once per size with the integration harness's Worker and killed
at the end (also on failure). Each round takes turns:

- ansible.builtin.ping in one playbook (the per-task baseline);
- celery_worker_info in one playbook: expected_nodes = the node names, include ping, stats,
  active, reserved, active_queues, timeout 5 (it returns as soon as every node answered);
- both in the same playbook (the target's wording), in each order;
- the same information from the celery CLI: status, then inspect stats, active, reserved and
  active_queues, one process after the other, timed as the whole sequence;
- diagnostics: the module's gather() in this process with Control's parts timed, and the
  import of the module vs ansible.module_utils.basic in fresh interpreters.

Every run is checked: the module's `online` is the node names and nothing is missing, unexpected
or duplicated, every node answered every section; each CLI command lists exactly the nodes.
Fewer rounds than the other sections (BENCH_WORKER_ROUNDS; 3, quick 2): a round takes ~20 s.
"""

import os
import re
import signal
import sys
import tempfile
import time

import lib

SIZES = tuple(int(n) for n in (os.environ.get('BENCH_WORKER_SIZES') or '3,12').split(','))
ROUNDS = int(os.environ.get('BENCH_WORKER_ROUNDS') or min(lib.REPEAT, 2 if lib.QUICK else 3))
QUEUE = 'bench.workers'
INCLUDE = ['ping', 'stats', 'active', 'reserved', 'active_queues']
TIMEOUT = 5
CLI_STEPS = (('status',), ('inspect', 'stats'), ('inspect', 'active'), ('inspect', 'reserved'),
             ('inspect', 'active_queues'))
IMPORT = "import sys, os; sys.path.insert(0, os.environ['ANSIBLE_COLLECTIONS_PATH'].split(':')[0]); import %s"
MODULE = 'ansible_collections.celeryops.fleet.plugins.modules.celery_worker_info'


def node_names(n):
    return ['bench%d@fleet' % i for i in range(1, n + 1)]


# -- workers -----------------------------------------------------------------------------------

def worker_command(worker):
    """A worker's command line as one would type it (python -m celery -> celery, no --logfile)."""
    argv = list(worker.process.args)[3:]
    if '--logfile' in argv:
        at = argv.index('--logfile')
        del argv[at:at + 2]
    return 'cd tests/integration/app && CELERY_BROKER_URL=%s celery %s' % (lib.REDIS_URL, lib.show(argv))


# -- the celery CLI ----------------------------------------------------------------------------

def celery_argv(step):
    return [os.path.join(os.path.dirname(sys.executable), 'celery'), '-A', 'fleet_tasks'] + list(step)


def cli_command():
    return 'cd tests/integration/app && export CELERY_BROKER_URL=%s && %s' % (
        lib.REDIS_URL, ' && '.join('celery -A fleet_tasks %s' % ' '.join(step) for step in CLI_STEPS))


def check_cli(step, out, names):
    text = out.decode('utf-8', 'replace')
    nodes = re.findall(r'^->  (\S+): OK', text, re.M)
    if sorted(nodes) != sorted(names) or '%d nodes online.' % len(names) not in text:
        raise AssertionError('celery %s listed %r, expected %r: %s' % (' '.join(step), nodes, names, text[-500:]))


def cli_sequence(names):
    """The CLI commands one after the other: (seconds of the whole sequence, seconds of each)."""
    env = {'CELERY_BROKER_URL': lib.REDIS_URL}
    steps, outputs = [], []
    start = time.perf_counter()
    for step in CLI_STEPS:
        seconds, out = lib.timed(celery_argv(step), env=env, cwd=lib.APP_DIR)
        steps.append(seconds)
        outputs.append(out)
    total = time.perf_counter() - start
    for step, out in zip(CLI_STEPS, outputs):
        check_cli(step, out, names)
    return total, steps


# -- the module --------------------------------------------------------------------------------

def module_vars(names):
    return dict(broker_url=lib.REDIS_URL, expected_nodes=names, include=INCLUDE, reply_timeout=TIMEOUT)


def check_module(summary, names):
    expected = sorted(names)
    problems = []
    if summary.get('online') != expected:
        problems.append('online %r' % summary.get('online'))
    for key in ('missing', 'unexpected', 'duplicates'):
        if summary.get(key) != []:
            problems.append('%s %r' % (key, summary.get(key)))
    sections = summary.get('sections') or {}
    for name in names:
        if not set(INCLUDE) <= set(sections.get(name) or ()):
            problems.append('%s answered only %r' % (name, sections.get(name)))
    if problems:
        raise AssertionError('celery_worker_info with %d workers: %s' % (len(names), '; '.join(problems)))


def module_inprocess(names):
    """The module's gather() in this process (no Ansible), with Control's parts timed: {part: seconds}."""
    lib.module_utils()
    from ansible_collections.celeryops.fleet.plugins.module_utils import _control
    from ansible_collections.celeryops.fleet.plugins.module_utils._broker import broker_argument_spec
    from ansible_collections.celeryops.fleet.plugins.module_utils._wait import wait_argument_spec
    from ansible_collections.celeryops.fleet.plugins.modules import celery_worker_info
    params = {}
    for spec in (broker_argument_spec(), wait_argument_spec()):
        for name, option in spec.items():
            params[name] = option.get('default')
    params.update(broker_url=lib.REDIS_URL, expected_nodes=list(names), expected_count=None, include=list(INCLUDE),
                  timeout=float(TIMEOUT), global_keyprefix='')
    spent = {}
    saved = []

    def wrap(name, label):
        real = getattr(_control.Control, name)

        def wrapper(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                value = real(self, *args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
            return value
        saved.append((name, real))
        setattr(_control.Control, name, wrapper)

    wrap('__init__', 'connect')
    wrap('request', 'request')
    wrap('close', 'close')
    result = {}
    try:
        celery_worker_info.check_params(params)
        start = time.perf_counter()
        celery_worker_info.gather(params, result)
        spent['gather'] = time.perf_counter() - start
    finally:
        for name, real in saved:
            setattr(_control.Control, name, real)
    if result.get('online') != sorted(names) or result.get('missing'):
        raise AssertionError('gather() in process: online %r, missing %r' % (result.get('online'), result.get('missing')))
    spent['elapsed'] = result['elapsed']
    return spent


def import_seconds(module):
    seconds, _out = lib.timed([sys.executable, '-c', IMPORT % module])
    return seconds


# The controller's build of a module's payload (AnsiballZ), which the first task of each module in
# a playbook run pays; timed in a fresh interpreter, so nothing is cached.
PAYLOAD = """
import sys, time
from ansible.executor import module_common
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader, module_loader
from ansible.template import Templar
init_plugin_loader()
found = module_loader.find_plugin_with_context(sys.argv[1])
started = time.perf_counter()
module_common.modify_module(module_name=sys.argv[1], module_path=found.plugin_resolved_path, module_args={},
                            templar=Templar(loader=DataLoader()), task_vars={})
print(time.perf_counter() - started)
"""


def payload_seconds(module):
    _seconds, out = lib.timed([sys.executable, '-c', PAYLOAD, module])
    return float(out.strip().splitlines()[-1])


# -- one size ----------------------------------------------------------------------------------

def bench_size(n, logdir):
    names = node_names(n)
    start = time.perf_counter()
    workers = lib.start_workers(names, QUEUE, logdir)
    started = time.perf_counter() - start
    lib.log('%d workers ready in %.1f s' % (n, started))
    results = dict(ping=dict(wall=[], task=[]), worker_info=dict(wall=[], task=[], elapsed=[], result_bytes=[]),
                   celery_cli=dict(wall=[], steps=[[] for _step in CLI_STEPS]))
    parts = ('connect', 'request', 'close', 'gather', 'elapsed')
    inprocess = dict(as_is=dict((part, []) for part in parts))
    imports = dict(basic=[], module=[])
    beside = dict(ping=[], worker_info=[])
    payloads = dict(ping=[], worker_info=[])
    try:
        for round_ in range(ROUNDS):
            wall, task = lib.run_playbook('ping.yml')
            if task['summary'].get('ping') != 'pong':
                raise AssertionError('ping task said %r' % task['summary'])
            results['ping']['wall'].append(wall)
            results['ping']['task'].append(task['seconds'])

            wall, task = lib.run_playbook('worker_info.yml', module_vars(names))
            check_module(task['summary'], names)
            results['worker_info']['wall'].append(wall)
            results['worker_info']['task'].append(task['seconds'])
            results['worker_info']['elapsed'].append(task['summary']['elapsed'])
            results['worker_info']['result_bytes'].append(task['summary'].get('result_bytes'))

            # Issue 3's comparison as it is worded: both tasks in the same playbook, each order once a round.
            for ping_first in (True, False):
                _wall, tasks = lib.run_playbook_tasks('worker_info_beside_ping.yml',
                                                      dict(module_vars(names), ping_first=ping_first))
                by_name = dict((task['name'], task) for task in tasks)
                check_module(by_name['Ask the workers']['summary'], names)
                beside['ping'].append(by_name['Ping' if ping_first else 'Ping after']['seconds'])
                beside['worker_info'].append(by_name['Ask the workers']['seconds'])

            wall, steps = cli_sequence(names)
            results['celery_cli']['wall'].append(wall)
            for i, seconds in enumerate(steps):
                results['celery_cli']['steps'][i].append(seconds)

            for part, seconds in module_inprocess(names).items():
                inprocess['as_is'][part].append(seconds)
            imports['basic'].append(import_seconds('ansible.module_utils.basic'))
            imports['module'].append(import_seconds(MODULE))
            payloads['ping'].append(payload_seconds('ansible.builtin.ping'))
            payloads['worker_info'].append(payload_seconds('celeryops.fleet.celery_worker_info'))
            lib.log('%d workers, round %d/%d: ping %.2fs (task %.2fs), worker_info %.2fs (task %.2fs), '
                    'celery CLI %.2fs, close() in process %.2fs' % (
                        n, round_ + 1, ROUNDS, results['ping']['wall'][-1], results['ping']['task'][-1],
                        results['worker_info']['wall'][-1], results['worker_info']['task'][-1],
                        results['celery_cli']['wall'][-1], inprocess['as_is']['close'][-1]))
        command = worker_command(workers[0])
    finally:
        lib.kill_workers(workers)
    out = dict(n=n, names=names, start_seconds=started, worker_command=command, variants={},
               command=lib.playbook_command('worker_info.yml', module_vars(names)))
    for name in ('ping', 'worker_info', 'celery_cli'):
        data = results[name]
        entry = dict(wall=lib.summary(data['wall']))
        if 'task' in data:
            entry['task'] = lib.summary(data['task'])
        out['variants'][name] = entry
    out['variants']['worker_info']['elapsed'] = lib.summary(results['worker_info']['elapsed'])
    out['variants']['worker_info']['result_bytes'] = results['worker_info']['result_bytes'][-1]
    out['variants']['celery_cli']['steps'] = [
        dict(command='celery -A fleet_tasks %s' % ' '.join(step), wall=lib.summary(values))
        for step, values in zip(CLI_STEPS, results['celery_cli']['steps'])]
    out['inprocess'] = dict((key, dict((part, lib.summary(values)) for part, values in parts.items()))
                            for key, parts in inprocess.items())
    out['imports'] = dict((key, lib.summary(values)) for key, values in imports.items())
    out['beside'] = dict((key, lib.summary(values)) for key, values in beside.items())
    out['payloads'] = dict((key, lib.summary(values)) for key, values in payloads.items())
    out['beside_command'] = lib.playbook_command('worker_info_beside_ping.yml', dict(module_vars(names), ping_first=True))
    return out


def main():
    # SIGTERM ends the run through the finally clauses, which kill the workers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    lib.reset_redis()
    logdir = tempfile.mkdtemp(prefix='workers-', dir=lib.OUT)
    sizes = {}
    try:
        for n in SIZES:
            sizes[str(n)] = bench_size(n, logdir)
    finally:
        lib.reset_redis()
    lib.module_utils()
    from ansible_collections.celeryops.fleet.plugins.module_utils._control import DUPLICATE_GRACE
    out = dict(sizes=sizes, order=[str(n) for n in SIZES], rounds=ROUNDS, include=INCLUDE, timeout=TIMEOUT,
               queue=QUEUE, duplicate_grace=DUPLICATE_GRACE, commands=dict(
                   ping=lib.playbook_command('ping.yml'),
                   celery_cli=cli_command(),
                   imports=dict(basic='python -c "%s"' % (IMPORT % 'ansible.module_utils.basic'),
                                module='python -c "%s"' % (IMPORT % MODULE)),
                   inprocess='in process (bench/worker_info.py): celery_worker_info.gather(params, result), '
                             'Control.__init__/request/close timed'))
    lib.write_result('worker_info', out)


if __name__ == '__main__':
    main()
