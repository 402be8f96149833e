"""5. Checks and diagnostics that go with the numbers.

- The Redis queue modules do not import celery or kombu: their import chain in a fresh
  interpreter, then the whole Redis code path (connect, discover, counts, peek, breakdown,
  purge in check mode) run in that interpreter, with sys.modules checked after each.
- breakdown() returns exactly what task_name_of() per element returns, on edge cases
  (escaped, unicode, empty and missing names, compact JSON, protocol 1, not JSON).
- Where a module task's time goes: the module's imports, and the AnsiballZ payload of
  celery_queue_info vs ping run by hand (Ansible's own module run, without the controller).
"""

import base64
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

import lib

IMPORT_ONLY = ("import sys, os; sys.path.insert(0, os.environ['ANSIBLE_COLLECTIONS_PATH'].split(':')[0]); "
               "import ansible_collections.celeryops.fleet.plugins.modules.celery_queue_info; "
               "import ansible_collections.celeryops.fleet.plugins.modules.celery_queue; "
               "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu')); "
               "print(bad); sys.exit(1 if bad else 0)")

RUN_REDIS_PATH = r'''
import json, os, sys
sys.path.insert(0, os.environ['ANSIBLE_COLLECTIONS_PATH'].split(':')[0])
def bad():
    return sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu'))
def heavy():  # not wrong on Redis, only slow to import: the AMQP layer's libraries
    return sorted(m for m in ('pika', 'ansible.module_utils.urls', 'cryptography.x509') if m in sys.modules)
steps, heavy_modules = {}, {}
import ansible_collections.celeryops.fleet.plugins.modules.celery_queue_info as info_module
import ansible_collections.celeryops.fleet.plugins.modules.celery_queue as queue_module
steps['import'] = bad()
heavy_modules['import'] = heavy()
from ansible_collections.celeryops.fleet.plugins.module_utils import _queues
params = json.loads(sys.argv[1])
queues = _queues.open_queues(params)
names = queues.discover(False)
states = _queues.queue_states(queues, names)
peeked = queues.peek(names[0], 5)
tasks = queues.breakdown(names[0])
would = queues.purge(names[0], check_mode=True)
queues.close()
steps['run'] = bad()
heavy_modules['run'] = heavy()
print(json.dumps(dict(steps=steps, heavy=heavy_modules, names=names, messages=sum(s['messages'] for s in states),
                      peeked=len(peeked), tasks=tasks, would=would)))
sys.exit(1 if any(steps.values()) else 0)
'''


def import_check():
    lib.reset_redis()
    client = lib.redis_client()
    envelopes = lib.Envelopes()
    counts, _size = lib.fill_backlog(client, envelopes, 'bench.imports', 50, seed=5)
    python = sys.executable
    proc = subprocess.run([python, '-c', IMPORT_ONLY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=lib.ROOT,
                          check=False)
    import_only = dict(command='python -c "%s"' % IMPORT_ONLY, rc=proc.returncode,
                       output=proc.stdout.decode('utf-8', 'replace').strip()[-2000:])
    params = lib.module_params(lib.REDIS_URL)
    proc = subprocess.run([python, '-c', RUN_REDIS_PATH, json.dumps(params)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=lib.ROOT, check=False)
    text = proc.stdout.decode('utf-8', 'replace').strip()
    try:
        data = json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        data = dict(error=text[-2000:])
    ok = proc.returncode == 0 and data.get('tasks') == counts and data.get('would') == 50
    run_path = dict(command='python -c "<bench/checks.py RUN_REDIS_PATH>" \'<module params, broker_url %s>\'' % lib.REDIS_URL,
                    rc=proc.returncode, result=data, ok=ok)
    lib.reset_redis()
    return dict(import_only=import_only, run_path=run_path,
                passed=import_only['rc'] == 0 and run_path['rc'] == 0 and ok)


def breakdown_equivalence():
    """breakdown() == task_name_of() per element, on awkward elements mixed at random."""
    _queues = lib.module_utils()
    from ansible_collections.celeryops.fleet.plugins.module_utils._messages import task_name_of
    names = ['proj.add', 'caf\u00e9.t\u00e2che', 'quote"in', 'back\\slash', 'tab\there', '', 'x' * 300,
             'emoji\U0001F600', 'end\\']

    def envelope(name, separators, ensure_ascii, protocol):
        if protocol == 2:
            d = {'body': base64.b64encode(b'[[1], {}, {}]').decode(), 'content-type': 'application/json',
                 'headers': {'lang': 'py', 'task': name, 'argsrepr': '("task": "evil",)'}, 'properties': {}}
        else:
            body = json.dumps({'task': name, 'id': 'x', 'args': [], 'kwargs': {}})
            d = {'body': base64.b64encode(body.encode()).decode(), 'content-type': 'application/json',
                 'headers': {}, 'properties': {'body_encoding': 'base64'}}
        return json.dumps(d, separators=separators, ensure_ascii=ensure_ascii).encode('utf-8')
    elements = [envelope(n, sep, ea, proto) for n in names for sep in ((', ', ': '), (',', ':'), (', ', ':  '))
                for ea in (True, False) for proto in (1, 2)]
    elements += [b'not json', b'\xff\xfe', b'{"task": "unterminated', b'{"task": 5}', b'{"task": ""}',
                 b'{"x": "\\"task\\": \\"fake\\"", "headers": {"task": "real"}}', b'{"task": "\xff\xfe"}',
                 b'{"task":"a", "task": "b", "headers": {}}', b'{"task": "a\\u00e9"}', b'[1,2]',
                 b'{"headers": {"task": "t\\"q"}}']

    # On the real Redis: the counting runs there (a Lua script), the odd elements here.
    queues = _queues.open_queues(lib.module_params(lib.REDIS_URL))
    key = 'bench.awkward'
    rnd = random.Random(1)
    mixes = 300
    try:
        for _mix in range(mixes):
            sample = [rnd.choice(elements) for _i in range(rnd.randint(1, 80))]
            ref = {}
            for raw in sample:
                t = task_name_of(raw)
                ref[t] = ref.get(t, 0) + 1
            queues.client.delete(key)
            queues.client.rpush(key, *sample)
            got = queues.breakdown(key)
            if got != ref:
                return dict(passed=False, kinds=len(elements), mixes=mixes, got=got, expected=ref)
    finally:
        queues.client.delete(key)
        queues.close()
    return dict(passed=True, kinds=len(elements), mixes=mixes)


def import_costs():
    """Seconds to import, in a fresh interpreter: ansible's basic (what ping pays too) vs the module."""
    python = sys.executable
    path = os.environ['ANSIBLE_COLLECTIONS_PATH'].split(':')[0]
    code = ("import sys, time; sys.path.insert(0, %r); t = time.perf_counter(); import %s; "
            "print(time.perf_counter() - t)")
    out = {}
    for label, module in (('basic', 'ansible.module_utils.basic'),
                          ('celery_queue_info', 'ansible_collections.celeryops.fleet.plugins.modules.celery_queue_info'),
                          ('redis', 'redis'), ('pika', 'pika'), ('urls', 'ansible.module_utils.urls')):
        values = []
        for _round in range(lib.REPEAT):
            _s, stdout = lib.timed([python, '-c', code % (path, module)])
            values.append(float(stdout.decode().strip()))
        out[label] = lib.summary(values)
    # Inside the module's import, per top-level dependency (python -X importtime, cumulative us).
    proc = subprocess.run([python, '-X', 'importtime', '-c', code % (
        path, 'ansible_collections.celeryops.fleet.plugins.modules.celery_queue_info')],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    cumulative = {}
    for line in proc.stderr.decode().splitlines():
        m = re.match(r'import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)', line)
        if m and m.group(4) in ('pika', 'redis', 'ansible.module_utils.urls', 'ansible.module_utils.basic',
                                'ansible_collections.celeryops.fleet.plugins.module_utils._amqp_queues',
                                'ansible_collections.celeryops.fleet.plugins.module_utils._redis_queues',
                                'ansible_collections.celeryops.fleet.plugins.modules.celery_queue_info'):
            cumulative.setdefault(m.group(4), int(m.group(2)) / 1e6)
    out['importtime_cumulative_s'] = cumulative
    return out


def ansiballz_split():
    """Run the AnsiballZ payloads Ansible built for ping and for celery_queue_info (a queue named
    explicitly) by hand: the module's side of a task, without the controller."""
    tmp = tempfile.mkdtemp(prefix='bench-ansiballz-', dir=lib.OUT)
    try:
        payloads = {}
        one = {'broker_url': lib.REDIS_URL, 'queues': ['bench.q0000']}
        for label, playbook, extra in (('ping', 'ping.yml', None), ('celery_queue_info', 'queue_info.yml', one)):
            remote = os.path.join(tmp, label)
            env = dict(lib.PLAYBOOK_ENV, ANSIBLE_KEEP_REMOTE_FILES='1', ANSIBLE_REMOTE_TMP=remote,
                       BENCH_TIMER_FILE=os.path.join(tmp, 'timer.json'))
            lib.timed(lib.playbook_argv(playbook, extra), env=env)
            found = glob.glob(os.path.join(remote, '*', 'AnsiballZ_*.py'))
            if len(found) != 1:
                raise RuntimeError('expected one AnsiballZ payload in %s, found %r' % (remote, found))
            payloads[label] = found[0]
        out = {}
        python = os.environ.get('ANSIBLE_PYTHON_INTERPRETER') or sys.executable
        values = dict((label, []) for label in payloads)
        for _round in range(lib.REPEAT):  # the payloads take turns
            for label, payload in payloads.items():
                seconds, stdout = lib.timed([python, payload])
                json.loads(stdout.decode().strip().splitlines()[-1])  # the module answered
                values[label].append(seconds)
        for label, payload in payloads.items():
            out[label] = dict(run=lib.summary(values[label]), bytes=os.path.getsize(payload),
                              command='%s %s' % (os.path.basename(python), os.path.basename(payload)))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    out = dict(imports=import_check(), breakdown_equivalence=breakdown_equivalence(), import_costs=import_costs())
    lib.reset_redis()
    out['ansiballz'] = ansiballz_split()
    lib.write_result('checks', out)
    if not (out['imports']['passed'] and out['breakdown_equivalence']['passed']):
        lib.log('a check failed: %s' % json.dumps(out, indent=1)[:3000])
        sys.exit(1)


if __name__ == '__main__':
    main()
