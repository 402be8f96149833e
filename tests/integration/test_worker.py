"""celery_worker (consuming, drained, stopped) against real Celery workers on Redis and RabbitMQ."""

import re
import time

import pytest

from harness import publish

SLEEP = 'fleet_tasks.sleep'


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def worker_state(ansible, url, node):
    result = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=[node],
                                                       include=['active_queues'], timeout=5))
    return result['workers'].get(node, {}).get('queues')


def succeeded(*workers):
    """task id -> how many times a worker logged it as succeeded."""
    counts = {}
    for worker in workers:
        for task_id in re.findall(r'Task fleet_tasks\.\w+\[([0-9a-f-]+)\] succeeded', worker.log()):
            counts[task_id] = counts.get(task_id, 0) + 1
    return counts


def test_consuming_check_mode_real_and_idempotent(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'cons@fleet', ['q1', 'q2'])
    args = dict(broker_url=url, nodes=['cons@fleet'], state='consuming', queues=['q1', 'q3'], exclusive=True)
    check = ansible.module('celery_worker', args, check=True)
    assert check['changed'] is True
    assert check['nodes']['cons@fleet']['actions'] == ['add_consumer q3', 'cancel_consumer q2']
    assert worker_state(ansible, url, 'cons@fleet') == ['q1', 'q2']  # check mode sent nothing

    real, again = ansible.play([{'celeryops.fleet.celery_worker': args}, {'celeryops.fleet.celery_worker': args}])
    assert real['changed'] is True, real
    assert real['nodes']['cons@fleet']['before']['queues'] == ['q1', 'q2']
    assert real['nodes']['cons@fleet']['after']['queues'] == ['q1', 'q3']
    assert again['changed'] is False and again['nodes']['cons@fleet']['actions'] == []
    assert worker_state(ansible, url, 'cons@fleet') == ['q1', 'q3']

    # Not exclusive: only adds.
    more = ansible.module('celery_worker', dict(broker_url=url, nodes=['cons@fleet'], state='consuming',
                                                queues=['q2']))
    assert more['nodes']['cons@fleet']['after']['queues'] == ['q1', 'q2', 'q3']


def test_drain_stop_start_loses_no_task(broker, ansible, workers):
    url = broker.url
    first = workers.start(url, 'drain@fleet', ['work'], pool='threads', concurrency=1, prefetch=2)
    ids = publish(url, SLEEP, 'work', args=(1.5,), count=6)
    # The worker runs one and holds prefetched ones while the drain starts.
    drained = ansible.module('celery_worker', dict(broker_url=url, nodes=['drain@fleet'], state='drained',
                                                   wait_timeout=120, wait_sleep=0.2))
    assert not drained.get('failed'), drained
    node = drained['nodes']['drain@fleet']
    assert node['actions'] == ['cancel_consumer work']
    assert node['after'] == dict(queues=[], active=0, reserved=0, concurrency=1, autoscale=None)
    again = ansible.module('celery_worker', dict(broker_url=url, nodes=['drain@fleet'], state='drained'))
    assert again['changed'] is False

    stopped = ansible.module('celery_worker', dict(broker_url=url, nodes=['drain@fleet'], state='stopped',
                                                   wait_timeout=60))
    assert stopped['changed'] is True and stopped['nodes']['drain@fleet']['after'] is None
    assert first.process.wait(30) == 0
    gone = ansible.module('celery_worker', dict(broker_url=url, nodes=['drain@fleet'], state='stopped'))
    assert gone['changed'] is False and gone['missing'] == ['drain@fleet']

    # What the drained worker did not take waits in the queue; a new worker runs it.
    second = workers.start(url, 'drain@fleet', ['work'], pool='threads', concurrency=2)
    ansible.module('celery_queue_info', dict(broker_url=url, queues=['work'], max_messages=0, wait=True,
                                             wait_timeout=60, wait_sleep=0.3))
    done = {}
    for _attempt in range(100):
        done = succeeded(first, second)
        if set(ids) <= set(done):
            break
        time.sleep(0.2)
    assert set(done) == set(ids), (done, ids)
    assert all(n == 1 for n in done.values()), done


def test_drain_timeout_reports_what_is_still_held(redis_env, ansible, workers):
    url = redis_env.url
    workers.start(url, 'busy@fleet', ['work'], concurrency=1, prefetch=2)
    publish(url, SLEEP, 'work', args=(30,), count=3)
    result = ansible.module('celery_worker', dict(broker_url=url, nodes=['busy@fleet'], state='drained',
                                                  wait_timeout=2, wait_sleep=0.3))
    assert result['failed']
    assert 'wait_timeout' in result['msg'] and 'busy@fleet' in result['msg']
    assert 'active fleet_tasks.sleep[' in result['msg']
    assert result['nodes']['busy@fleet']['after']['queues'] == []


def test_bad_input(redis_env, ansible, workers):
    url = redis_env.url
    workers.start(url, 'here@fleet', ['q1'])
    cases = [
        (dict(broker_url=url, nodes=['gone@fleet'], state='drained'), 'nodes not online (state drained needs them'),
        (dict(broker_url=url, nodes=['x'], state='drained'), "nodes: 'x' is not a node name"),
        (dict(broker_url=url, nodes=[''], state='stopped'), 'nodes: a node name is empty'),
        (dict(broker_url=url, state='consuming'), 'queues is required with state: consuming'),
        (dict(broker_url=url, state='drained', exclusive=True), 'exclusive only goes with state: consuming'),
        (dict(broker_url=url, state='drained', queues=['']), 'queues: a queue name is empty'),
        (dict(broker_url=url, state='drained', wait_timeout=0), 'wait_timeout must be a positive number'),
        (dict(broker_url=url, state='paused'), 'state'),
        (dict(broker_url='redis://127.0.0.1:1/0', state='stopped'), 'redis 127.0.0.1:1 db 0'),
        (dict(broker_url=url, concurrency=0), 'concurrency must be 1 or more'),
        (dict(broker_url=url, autoscale=[2, 5]), 'autoscale: max (2) must be at least min (5)'),
        (dict(broker_url=url, autoscale=[5]), 'autoscale must be [max, min]'),
        (dict(broker_url=url), 'nothing to do'),
        (dict(broker_url=url, state='stopped', concurrency=2), 'state: stopped goes with neither'),
        (dict(broker_url=url, nodes=['here@fleet'], concurrency=3), 'pool_grow on here@fleet failed'),
    ]
    results = ansible.play([{'celeryops.fleet.celery_worker': args} for args, _expected in cases])
    for (args, expected), result in zip(cases, results):
        assert result.get('failed'), (args, result)
        assert expected in result['msg'], (args, result['msg'])
        assert 'Traceback' not in result['msg']
    assert worker_state(ansible, url, 'here@fleet') == ['q1']


def test_concurrency_autoscale_and_events(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'pool@fleet', ['q1'], pool='prefork', concurrency=2)
    workers.start(url, 'scale@fleet', ['q1'], pool='prefork', concurrency=None, autoscale='3,1')
    grow = dict(broker_url=url, nodes=['pool@fleet'], concurrency=3)
    check = ansible.module('celery_worker', grow, check=True)
    assert check['nodes']['pool@fleet']['actions'] == ['pool_grow 1']
    assert check['nodes']['pool@fleet']['after']['concurrency'] == 2
    real, again = ansible.play([{'celeryops.fleet.celery_worker': dict(grow, wait_timeout=60)},
                                {'celeryops.fleet.celery_worker': grow}])
    assert real['changed'] and real['nodes']['pool@fleet']['after']['concurrency'] == 3, real
    assert again['changed'] is False
    shrink = ansible.module('celery_worker', dict(grow, concurrency=1, wait_timeout=60))
    assert shrink['nodes']['pool@fleet']['actions'] == ['pool_shrink 2']
    assert shrink['nodes']['pool@fleet']['after']['concurrency'] == 1

    scale = dict(broker_url=url, nodes=['scale@fleet'], autoscale=[4, 2])
    first, second = ansible.play([{'celeryops.fleet.celery_worker': scale}, {'celeryops.fleet.celery_worker': scale}])
    assert first['changed'] and first['nodes']['scale@fleet']['before']['autoscale'] == [3, 1], first
    assert first['nodes']['scale@fleet']['after']['autoscale'] == [4, 2]
    assert second['changed'] is False
    refused = ansible.module('celery_worker', dict(broker_url=url, nodes=['pool@fleet'], autoscale=[4, 2]))
    assert refused['failed'] and 'runs without --autoscale' in refused['msg']

    events = dict(broker_url=url, nodes=['pool@fleet'], events=True)
    on, again_on = ansible.play([{'celeryops.fleet.celery_worker': events}, {'celeryops.fleet.celery_worker': events}])
    assert on['changed'] is True and on['nodes']['pool@fleet']['actions'] == ['enable_events']
    assert again_on['changed'] is False and again_on['nodes']['pool@fleet']['actions'] == []
