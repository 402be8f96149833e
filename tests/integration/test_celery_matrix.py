"""Every Celery 5.x worker: real workers of Celery 5.2 to 5.7, each from a virtualenv of its own
(tests/integration/celery_versions/<version>.txt, built once and cached by celery_versions/venv.sh), against
Redis and RabbitMQ. The modules run in the main virtualenv as always.

One test per (version, broker): the workers start once, the broker gets its messages from that version's own
Celery and kombu (celery_versions/publish.py, so Redis holds the key layout that kombu writes: bindings, the
unacked hash, priority keys, under a global_keyprefix), then ONE ansible-playbook runs every module task and the
assertions read its JSON report. scripts/test runs these as the step celery-matrix (marker celery_matrix); the
other integration steps leave this file out.
"""

import json
import os
import subprocess

import pytest

from harness import APP_DIR, wait_for

pytestmark = pytest.mark.celery_matrix

VERSIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'celery_versions')
VERSIONS = ['5.2', '5.3', '5.4', '5.5', '5.6', '5.7']
PREFIX = 'mx|'            # kombu's global_keyprefix on Redis, on every key the workers and publisher write
SEP = '\x06\x16'          # kombu's default priority separator
STEPS = [0, 3, 6, 9]      # kombu's default priority steps
STAMPED = '5.3'           # revoke_by_stamped_headers came with Celery 5.3
TASKS = {'fleet_tasks.add', 'fleet_tasks.sleep', 'fleet_tasks.mail', 'fleet_tasks.fail', 'fleet_tasks.flaky',
         'fleet_tasks.record'}


def version_key(version):
    return tuple(int(part) for part in version.split('.'))


def celery_venv(version):
    """The path of the version's virtualenv, built on first use (under a lock, cached)."""
    proc = subprocess.run(['bash', os.path.join(VERSIONS_DIR, 'venv.sh'), version], capture_output=True, text=True,
                          timeout=1200, check=False)
    assert proc.returncode == 0, 'building the Celery %s virtualenv failed:\n%s' % (version, proc.stderr[-3000:])
    return proc.stdout.strip().splitlines()[-1]


def publish(python, url, prefix, plan):
    """Send with the version's own Celery; returns (ids, celery version, kombu version)."""
    env = dict(os.environ, CELERY_BROKER_URL=url, PYTHONPATH=APP_DIR)
    env.pop('FLEET_KEYPREFIX', None)
    if prefix:
        env['FLEET_KEYPREFIX'] = prefix
    proc = subprocess.run([python, os.path.join(VERSIONS_DIR, 'publish.py'), json.dumps(plan)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, 'publishing failed:\n%s' % proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out['ids'], out['celery'], out['kombu']


def redis_priority_counts(client, queue):
    """step -> LLEN of each of kombu's priority lists of ``queue`` (step 0 is the bare key)."""
    return dict((str(step), client.llen(PREFIX + queue + (SEP + str(step) if step else ''))) for step in STEPS)


@pytest.fixture
def broker(request):
    """(url, env object, kind) of the broker parametrized."""
    kind = request.param
    env = request.getfixturevalue('redis_env' if kind == 'redis' else 'rabbit_env')
    return env.url, env, kind


@pytest.mark.parametrize('broker', ['redis', 'rabbitmq'], indirect=True)
@pytest.mark.parametrize('version', VERSIONS)
def test_celery_version(version, broker, workers, ansible):
    url, env, kind = broker
    venv = celery_venv(version)
    python = os.path.join(venv, 'bin', 'python')
    prefix = PREFIX if kind == 'redis' else None
    tag = version.replace('.', '') + kind[:3]
    node_a, node_b = 'a%s@matrix' % tag, 'b%s@matrix' % tag
    # A: prefork (the pool that can change size), sending events: two tasks running, a third reserved until the
    # pool grows to 4, when mx_c's tasks get the fourth process. B: one thread, an ETA task held (it stops at once).
    worker_a = workers.start(url, node_a, ['mx_a', 'mx_b'], pool='prefork', concurrency=2, events=True,
                             global_keyprefix=prefix, python=python)
    worker_b = workers.start(url, node_b, ['mx_r'], pool='threads', concurrency=1, global_keyprefix=prefix,
                             python=python)
    revoked_id = 'matrix-revoked-%s' % tag
    sends = ([dict(task='fleet_tasks.sleep', queue='mx_b', args=[300])] * 3
             + [dict(task='fleet_tasks.add', queue='mx_r', args=[5, 5], countdown=600)]
             + [dict(task='fleet_tasks.add', queue='mx_c', args=[n, n], priority=p) for n, p in ((1, 0), (2, 5), (3, 9))]
             + [dict(task='fleet_tasks.mail', queue='mx_c', args=['ops@example.org'])] * 2)
    ids, celery_version, kombu_version = publish(python, url, prefix, dict(sends=sends, revoke=[revoked_id]))
    assert celery_version.startswith(version + '.') and kombu_version.startswith(version + '.'), \
        (celery_version, kombu_version)
    sleeps, eta_id, mx_c_ids = ids[:3], ids[3], ids[4:]
    for worker, task_ids in ((worker_a, sleeps), (worker_b, [eta_id])):
        wait_for(lambda: all(task_id in worker.log() for task_id in task_ids), what='%s to receive its tasks' % worker.name)

    if kind == 'redis':
        # The key layout this kombu wrote, read directly: every key under the prefix, the bindings of each queue,
        # the held messages in the unacked hash, mx_c's messages spread over the priority lists.
        client = env.client
        keys = set(k.decode() for k in client.keys('*'))
        assert keys and all(k.startswith(PREFIX) for k in keys), sorted(keys)
        for queue in ('mx_a', 'mx_b', 'mx_r', 'mx_c'):
            assert PREFIX + '_kombu.binding.' + queue in keys, (queue, sorted(keys))
        # kombu 5.7 also keeps each queue's bindings in a permanent set, and a deadline per binding set.
        newer = sorted(k for k in keys if k.startswith((PREFIX + '_kombu.binding_permanent.', PREFIX + '_kombu.binding_deadlines')))
        if version_key(version) >= (5, 7):
            assert PREFIX + '_kombu.binding_permanent.mx_r' in newer and PREFIX + '_kombu.binding_deadlines' in newer, newer
        else:
            assert newer == [], newer
        # Tasks are acknowledged as they start (a moment after they are received): A's reserved one and B's ETA
        # one stay held.
        wait_for(lambda: sorted(json.loads(v)[-1] for v in client.hvals(PREFIX + 'unacked')) == ['mx_b', 'mx_r'],
                 what="unacked to hold mx_b's reserved task and mx_r's ETA task")
        layout = redis_priority_counts(client, 'mx_c')
        assert sum(layout.values()) == 5 and sum(1 for n in layout.values() if n) >= 2, layout
    else:
        env.wait_for('mx_r', lambda q: q.get('messages_unacknowledged') == 1)
        env.wait_for('mx_b', lambda q: q.get('messages_unacknowledged') == 1)

    fleet = 'celeryops.fleet.'
    sections = ['ping', 'stats', 'active', 'reserved', 'scheduled', 'registered', 'active_queues', 'revoked', 'conf',
                'memdump']
    defaults = dict(broker_url=url)
    if prefix:
        defaults['global_keyprefix'] = prefix
    tasks = [
        {fleet + 'celery_worker_info': dict(expected_nodes=[node_a, node_b], include=sections, timeout=10)},
        {fleet + 'celery_queue_info': dict(queues=['mx_a', 'mx_b', 'mx_r', 'mx_c'], peek=5, breakdown=True,
                                           priorities='all')},
        # The window opens before A consumes mx_c, and closes once its five tasks have succeeded.
        {fleet + 'celery_events_info': dict(duration=90, types=['task-received', 'task-succeeded'], max_events=10),
         'async': 120, 'poll': 0, 'register': 'window'},
        {fleet + 'celery_queue_info': {}},
        {fleet + 'celery_worker': dict(nodes=[node_a], concurrency=4)},
        {fleet + 'celery_worker': dict(nodes=[node_a], state='consuming', queues=['mx_c'])},
        {'ansible.builtin.async_status': {'jid': '{{ window.ansible_job_id }}'}, 'register': 'done',
         'until': 'done.finished', 'retries': 120, 'delay': 1},
        # B runs nothing (a drain waits until the node's tasks are done; A's sleep on): it drains at once.
        {fleet + 'celery_worker': dict(nodes=[node_b], state='drained')},
        {fleet + 'celery_task': dict(stamped_headers={'mx_stamp': 'nothing-carries-it'}, queues=['mx_a'],
                                     expected_nodes=[node_a, node_b], timeout=5)},
        {fleet + 'celery_worker': dict(nodes=[node_b], state='stopped')},
        {fleet + 'celery_worker_info': dict(expected_nodes=[node_a, node_b], include=['ping'], timeout=3)},
        {fleet + 'celery_queue': dict(queues=['mx_c'], state='purged')},
    ]
    results = ansible.play(tasks, play_extra={'module_defaults': {'group/celeryops.fleet.celery': defaults}},
                           timeout=600)
    (info, queues, _started, discovered, grow, consume, window, drain, stamped, stop, after, purge) = results
    seconds = ['%.1f' % t for t in ansible.task_seconds()]
    for index, result in enumerate(results):
        if index != 8:   # celery_task: see below
            assert not result.get('failed'), (index, result, seconds)

    # celery_worker_info, every section
    assert info['online'] == sorted([node_a, node_b]) and info['missing'] == [] and info['undecodable'] == 0, info
    a, b = info['workers'][node_a], info['workers'][node_b]
    for node in (a, b):
        assert node['ping'] == {'ok': 'pong'}
        assert TASKS <= set(node['registered'])
        assert revoked_id in node['revoked']
        assert isinstance(node['memdump'], str) and node['memdump']
        assert node['conf']['task_default_queue'] == 'fleet_default'
        assert node['stats']['broker']['transport'] == ('redis' if kind == 'redis' else 'amqp')
        # What the module's documentation promises of stats, on every version
        assert {'pid', 'uptime', 'pool', 'prefetch_count', 'total', 'rusage', 'broker'} <= set(node['stats']), node['stats']
    assert a['stats']['pid'] == worker_a.process.pid and b['stats']['pid'] == worker_b.process.pid
    assert a['stats']['pool']['max-concurrency'] == 2 and len(a['stats']['pool']['processes']) == 2
    assert b['stats']['pool']['max-concurrency'] == 1
    assert a['queues'] == ['mx_a', 'mx_b'] and b['queues'] == ['mx_r']
    assert sorted(t['id'] for t in a['active'] + a['reserved']) == sorted(sleeps) and len(a['active']) == 2, a
    assert a['scheduled'] == [] and b['active'] == [] and b['reserved'] == []
    assert [s['request']['id'] for s in b['scheduled']] == [eta_id]

    # celery_queue_info on the layout this version wrote
    by_name = dict((q['name'], q) for q in queues['queues'])
    assert [by_name[q]['messages'] for q in ('mx_a', 'mx_b', 'mx_r', 'mx_c')] == [0, 0, 0, 5], queues
    assert [by_name[q]['unacked'] for q in ('mx_a', 'mx_b', 'mx_r')] == [0, 1, 1], queues
    assert by_name['mx_c']['tasks'] == {'fleet_tasks.add': 3, 'fleet_tasks.mail': 2}
    assert sorted(m['id'] for m in by_name['mx_c']['peek']) == sorted(mx_c_ids)
    if kind == 'redis':
        assert by_name['mx_c']['priorities'] == layout
    else:
        assert by_name['mx_c']['priorities'] is None and by_name['mx_c']['type'] == 'classic'
        assert by_name['mx_r']['consumers'] == 1
    assert {'mx_a', 'mx_b', 'mx_r', 'mx_c'} <= set(q['name'] for q in discovered['queues']), discovered

    # celery_events_info: the five tasks A ran once it consumed mx_c, and A itself (from its heartbeats)
    assert consume['changed'] and 'mx_c' in consume['nodes'][node_a]['after']['queues'], consume
    assert window['finished'] and not window.get('failed'), window
    assert window['counts'] == {'task-received': 5, 'task-succeeded': 5} and window['events'] == 10, window
    assert [(window['tasks'][name]['received'], window['tasks'][name]['succeeded'])
            for name in ('fleet_tasks.add', 'fleet_tasks.mail')] == [(3, 3), (2, 2)], window['tasks']
    assert node_a in window['workers'] and window['workers'][node_a]['online'], window['workers']

    # celery_worker: drain, concurrency, stop
    assert drain['changed'] and drain['nodes'][node_b]['after']['queues'] == [], drain
    assert drain['nodes'][node_b]['actions'] == ['cancel_consumer mx_r'], drain
    assert grow['changed'] and grow['nodes'][node_a]['after']['concurrency'] == 4, grow
    assert stop['changed'] and node_b in stop['nodes'], stop
    assert after['online'] == [node_a] and after['missing'] == [node_b], after
    assert not purge['changed'], purge   # mx_c was emptied by A

    # What a version lacks is said plainly: revoke_by_stamped_headers before Celery 5.3.
    warnings = ' '.join(stamped.get('warnings', []))
    if version_key(version) < version_key(STAMPED):
        for node in (node_a, node_b):
            assert ('revoke_by_stamped_headers on %s failed: the worker has no control command revoke_by_stamped_headers, '
                    'which came with Celery 5.3' % node) in warnings, stamped
    else:
        assert not stamped.get('failed') and 'revoke_by_stamped_headers' not in warnings, stamped
        assert stamped['stamped_headers_sent'], stamped
