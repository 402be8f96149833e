"""The celery_workers inventory plugin against real workers, through ansible-inventory and ansible-playbook."""

import json
import os
import subprocess
import sys

import pytest

from harness import unwrapped


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def inventory_file(tmp_path, name, **options):
    path = tmp_path / ('%s.celery_workers.yml' % name)
    path.write_text(json.dumps(dict(plugin='celeryops.fleet.celery_workers', **options)))  # JSON is YAML
    return str(path)


def run(*argv, env=None):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable, **(env or {})))


def listing(path, *extra):
    out = run('ansible-inventory', '-i', path, '--list', *extra, env={'ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED': '1'})
    assert out.returncode == 0, out.stderr
    # Data from the workers is marked unsafe (never templated): {"__ansible_unsafe": "w1@fleet-a"}.
    return json.loads(out.stdout, object_hook=lambda d: d['__ansible_unsafe'] if list(d) == ['__ansible_unsafe'] else d)


def hosts(inventory, group):
    return sorted(inventory.get(group, {}).get('hosts', []))


def test_hosts_groups_constructed_and_a_playbook_on_a_group(broker, workers, tmp_path):
    url = broker.url
    one = workers.start(url, 'w1@fleet-a', ['q1', 'q.2'], concurrency=2)
    two = workers.start(url, 'w2@fleet-a', ['q3'], concurrency=1)
    three = workers.start(url, 'w3@fleet-b', ['q1'], concurrency=3)
    path = inventory_file(
        tmp_path, 'fleet', broker_url=url, expected_count=3, timeout=20,
        compose={'ansible_connection': "'local'", 'node_count': 'celery_nodes | length'},
        groups={'crowded': 'celery_nodes | length > 1'},
        keyed_groups=[{'key': "celery_nodes | map(attribute='concurrency') | max | string", 'prefix': 'concurrency'}])

    inventory = listing(path)
    hostvars = inventory['_meta']['hostvars']
    assert sorted(hostvars) == ['fleet-a', 'fleet-b']
    assert hostvars['fleet-a']['celery_nodes'] == [
        dict(name='w1@fleet-a', queues=['q.2', 'q1'], concurrency=2, pid=one.process.pid),
        dict(name='w2@fleet-a', queues=['q3'], concurrency=1, pid=two.process.pid)]
    assert hostvars['fleet-b']['celery_nodes'] == [dict(name='w3@fleet-b', queues=['q1'], concurrency=3,
                                                        pid=three.process.pid)]
    assert hostvars['fleet-a']['celery_queues'] == ['q.2', 'q1', 'q3']
    # ansible-core 2.16 gives composed values as text ('2'); 2.17+ keep Jinja's native type.
    assert [str(hostvars[host]['node_count']) for host in ('fleet-a', 'fleet-b')] == ['2', '1']
    assert hosts(inventory, 'celery_workers') == ['fleet-a', 'fleet-b']
    assert hosts(inventory, 'celery_queue_q1') == ['fleet-a', 'fleet-b']
    assert hosts(inventory, 'celery_queue_q_2') == ['fleet-a']
    assert hosts(inventory, 'celery_queue_q3') == ['fleet-a']
    assert hosts(inventory, 'crowded') == ['fleet-a']
    assert hosts(inventory, 'concurrency_2') == ['fleet-a'] and hosts(inventory, 'concurrency_3') == ['fleet-b']

    graph = run('ansible-inventory', '-i', path, '--graph')
    assert '@celery_queue_q3:' in graph.stdout and '|  |--fleet-a' in graph.stdout, graph.stdout + graph.stderr

    playbook = tmp_path / 'q1.yml'
    playbook.write_text(json.dumps([{'hosts': 'celery_queue_q1', 'gather_facts': False, 'tasks': [
        {'ansible.builtin.debug': {'msg': "{{ celery_nodes | map(attribute='name') | join(',') }}"}}]}]))
    play = run('ansible-playbook', '-i', path, str(playbook), env={'ANSIBLE_STDOUT_CALLBACK': 'ansible.posix.json'})
    assert play.returncode == 0, play.stdout[-2000:] + play.stderr
    results = json.loads(play.stdout)['plays'][0]['tasks'][0]['hosts']
    assert dict((h, r['msg']) for h, r in results.items()) == {'fleet-a': 'w1@fleet-a,w2@fleet-a',
                                                               'fleet-b': 'w3@fleet-b'}


def test_cache_and_bad_input(redis_env, workers, tmp_path):
    url = redis_env.url
    worker = workers.start(url, 'solo@cached', ['q1'])
    cached = inventory_file(tmp_path, 'cached', broker_url=url, timeout=1, cache=True, cache_plugin='jsonfile',
                            cache_connection=str(tmp_path / 'cache'))
    assert hosts(listing(cached), 'celery_workers') == ['cached']
    worker.kill()
    assert hosts(listing(cached), 'celery_workers') == ['cached']  # from the cache
    # --flush-cache: ansible-playbook has it on every supported ansible-core (ansible-inventory only from 2.17);
    # the fresh answer replaces the cache, which the next listing reads.
    playbook = tmp_path / 'groups.yml'
    playbook.write_text(json.dumps([{'hosts': 'localhost', 'gather_facts': False, 'tasks': [
        {'ansible.builtin.debug': {'msg': "{{ groups['celery_workers'] | default([]) }}"}}]}]))
    play = run('ansible-playbook', '-i', cached, '--flush-cache', str(playbook), env={'ANSIBLE_STDOUT_CALLBACK': 'ansible.posix.json'})
    assert play.returncode == 0, play.stdout[-2000:] + play.stderr
    assert json.loads(play.stdout)['plays'][0]['tasks'][0]['hosts']['localhost']['msg'] == []
    assert hosts(listing(cached), 'celery_workers') == []

    # A broker that is not there (the option matrix is in test_bad_input.py).
    secret = 'pw-not-shown-42'
    cases = [
        (dict(broker_url='redis://:%s@127.0.0.1:1/0' % secret), 'cannot connect to redis 127.0.0.1:1 db 0'),
    ]
    for index, (options, expected) in enumerate(cases):
        out = run('ansible-inventory', '-i', inventory_file(tmp_path, 'bad%d' % index, **options), '--list',
                  env={'ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED': '1', 'CELERY_BROKER_URL': ''})
        assert out.returncode != 0, (options, out.stdout)
        assert unwrapped('celeryops.fleet.celery_workers: ' + expected) in unwrapped(out.stderr), (options, out.stderr)
        assert secret not in out.stdout + out.stderr and 'Traceback' not in out.stderr


@pytest.mark.mitogen
def test_the_inventory_celery_worker_info_and_celery_worker_read_a_node_alike(redis_env, workers, ansible, tmp_path):
    """One reading of a node's replies (_workers.node_state) serves all three: same queues, same pool size."""
    url = redis_env.url
    worker = workers.start(url, 'same@fleet-c', ['zq', 'aq', 'mq'], concurrency=3)
    [node] = listing(inventory_file(tmp_path, 'same', broker_url=url, expected_count=1, timeout=20))[
        '_meta']['hostvars']['fleet-c']['celery_nodes']
    assert node == dict(name='same@fleet-c', queues=['aq', 'mq', 'zq'], concurrency=3, pid=worker.process.pid)
    info = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=['same@fleet-c'], timeout=5))
    assert info['workers']['same@fleet-c']['queues'] == node['queues']
    assert info['workers']['same@fleet-c']['stats']['pid'] == node['pid']
    check = ansible.module('celery_worker', dict(broker_url=url, nodes=['same@fleet-c'], state='drained'), check=True)
    assert check['nodes']['same@fleet-c']['before'] == dict(
        queues=node['queues'], active=0, reserved=0, concurrency=3, autoscale=None), check
