"""Issue 13, item 13: Redis with kombu's transport options sep and global_keyprefix, through ansible-playbook.

Real Celery workers run with broker_transport_options {'sep': ':', 'global_keyprefix': 'pfx:'}. The modules
and the inventory plugin that talk to workers get the same options and see every worker; and while
celery_worker_info waits for replies, a `celery inspect ping` of the same app still gets its own. (With
the default separator in the reply binding, every worker failed every reply: "not enough values to
unpack (expected 3, got 1)", for the module and for everyone else asking through the reply exchange.)
"""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from harness import APP_DIR, unwrapped


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic

SEP = ':'
PREFIX = 'pfx:'
TRANSPORT = dict(global_keyprefix=PREFIX, sep=SEP)
NODES = ['sep1@fleet', 'sep2@fleet']


def ok(result):
    assert not result.get('failed'), (result.get('msg'), result.get('module_stderr', '')[-2000:])
    return result


@pytest.fixture
def fleet(redis_env, workers, monkeypatch):
    """Two workers whose app has sep ':' and global_keyprefix 'pfx:' (the worker processes read FLEET_SEP)."""
    monkeypatch.setenv('FLEET_SEP', SEP)
    started = [workers.start(redis_env.url, NODES[0], ['q1'], global_keyprefix=PREFIX, heartbeat_interval=1),
               workers.start(redis_env.url, NODES[1], ['q1', 'q2'], global_keyprefix=PREFIX, heartbeat_interval=1)]
    # The workers really use them: their own bindings are written with ':' under the prefix.
    members = redis_env.client.smembers(PREFIX + '_kombu.binding.celery.pidbox')
    assert sorted(m.decode() for m in members) == ['::%s.celery.pidbox' % n for n in NODES], members
    yield redis_env
    for worker in started:
        assert 'not enough values to unpack' not in worker.log(), worker.log()[-3000:]


def inspect_ping(url):
    """`celery inspect ping` of the workers' own app (same broker and transport options), as JSON."""
    env = dict(os.environ, CELERY_BROKER_URL=url, FLEET_KEYPREFIX=PREFIX, FLEET_SEP=SEP, PYTHONPATH=APP_DIR)
    proc = subprocess.run([sys.executable, '-m', 'celery', '-A', 'fleet_tasks', 'inspect', 'ping', '--timeout', '5',
                           '--json'], env=env, capture_output=True, text=True, timeout=120, check=False)
    return proc


def reply_bindings(client):
    return client.smembers(PREFIX + '_kombu.binding.reply.celery.pidbox')


def test_worker_info_and_a_concurrent_celery_inspect_see_every_worker(fleet, ansible):
    client = fleet.client
    result = {}
    # No expected nodes: the module waits its whole timeout, during which `celery inspect ping` runs.
    module = threading.Thread(target=lambda: result.update(ansible.module('celery_worker_info', dict(
        broker_url=fleet.url, timeout=20, **TRANSPORT))))
    module.start()
    try:
        deadline = time.monotonic() + 120
        while not reply_bindings(client) and module.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        ours = reply_bindings(client)
        assert ours, 'the module never bound its reply queue'
        assert all(member.decode().count(SEP) == 2 for member in ours), ours
        cli = inspect_ping(fleet.url)
        still_waiting = ours <= reply_bindings(client)
    finally:
        module.join(300)
    assert still_waiting, 'the module had ended before `celery inspect ping` did: not concurrent'
    assert cli.returncode == 0, (cli.stdout, cli.stderr[-3000:])
    answered = json.loads(cli.stdout.strip().splitlines()[-1])
    assert sorted(answered) == NODES and all(reply == {'ok': 'pong'} for reply in answered.values()), answered
    ok(result)
    assert result['online'] == NODES and result['missing'] == [] and result['undecodable'] == 0
    assert result['workers'][NODES[1]]['queues'] == ['q1', 'q2']
    assert reply_bindings(client) == set()   # the module removed its binding on the way out


def test_worker_events_and_inventory_with_sep_and_keyprefix(fleet, ansible, tmp_path):
    url = fleet.url
    drained = ok(ansible.module('celery_worker', dict(broker_url=url, nodes=[NODES[1]], state='drained', queues=['q2'],
                                                      timeout=10, wait_timeout=120, **TRANSPORT)))
    assert drained['changed'] and drained['nodes'][NODES[1]]['after']['queues'] == ['q1']
    consuming = ok(ansible.module('celery_worker', dict(broker_url=url, nodes=[NODES[1]], state='consuming',
                                                        queues=['q2'], timeout=10, wait_timeout=120, **TRANSPORT)))
    assert consuming['changed'] and consuming['nodes'][NODES[1]]['after']['queues'] == ['q1', 'q2']
    info = ok(ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=NODES, timeout=10, **TRANSPORT)))
    assert info['workers'][NODES[1]]['queues'] == ['q1', 'q2']

    events = ok(ansible.module('celery_events_info', dict(broker_url=url, duration=4, **TRANSPORT)))
    assert sorted(events['workers']) == NODES and events['undecodable'] == 0

    path = str(tmp_path / 'fleet.celery_workers.yml')
    with open(path, 'w') as handle:
        json.dump(dict(plugin='celeryops.fleet.celery_workers', broker_url=url, timeout=3, expected_count=2,
                       **TRANSPORT), handle)
    proc = subprocess.run(['ansible-inventory', '-i', path, '--list'], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED='1'), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)['celery_workers']['hosts'] == ['fleet']


@pytest.mark.parametrize('option, value, message', [
    ('sep', '', 'sep must not be empty'),
    ('priority_steps', [0, 300], 'priority_steps must be a non-empty list of numbers from 0 to 255'),
])
def test_bad_transport_options_fail_naming_them(redis_env, ansible, tmp_path, option, value, message):
    tasks = [{'celeryops.fleet.' + module: dict(broker_url=redis_env.url, **{option: value}, **extra)}
             for module, extra in (('celery_worker_info', {}), ('celery_events_info', {}),
                                   ('celery_worker', dict(state='drained')))]
    for result in ansible.play(tasks):
        assert result.get('failed') and message in result['msg'] and 'Traceback' not in result['msg'], result
    path = str(tmp_path / 'bad.celery_workers.yml')
    with open(path, 'w') as handle:
        json.dump({'plugin': 'celeryops.fleet.celery_workers', 'broker_url': redis_env.url, option: value}, handle)
    proc = subprocess.run(['ansible-inventory', '-i', path, '--list'], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED='1'), check=False)
    assert proc.returncode != 0 and unwrapped(message) in unwrapped(proc.stderr), proc.stderr[-3000:]
