"""celery_worker_info against real Celery workers on Redis and RabbitMQ, through ansible-playbook."""

import pytest

from harness import RedisBroker, publish


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    """The same tests on both brokers: a fresh Redis database or RabbitMQ vhost."""
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def info(ansible, **args):
    return ansible.module('celery_worker_info', args)


def test_expected_workers_answer_at_once_with_every_section(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'alpha@fleet', ['q1', 'q2'], pool='threads', concurrency=2)
    workers.start(url, 'beta@fleet', ['q2'], pool='solo', concurrency=1)
    publish(url, 'fleet_tasks.sleep', 'q1', args=(20,), count=1)
    sections = ['ping', 'stats', 'active', 'reserved', 'scheduled', 'registered', 'active_queues', 'revoked',
                'conf', 'memdump']
    result = info(ansible, broker_url=url, expected_nodes=['alpha@fleet', 'beta@fleet'], include=sections,
                  timeout=20)
    assert not result.get('failed'), result
    assert result['changed'] is False
    assert result['online'] == ['alpha@fleet', 'beta@fleet']
    assert (result['missing'], result['unexpected'], result['duplicates'], result['count']) == ([], [], [], 2)
    # Everyone answered every section: no waiting out the 20 s budget.
    assert result['elapsed'] < 10, result['elapsed']
    alpha = result['workers']['alpha@fleet']
    assert set(alpha) == set(sections) | {'queues'}
    assert alpha['ping'] == {'ok': 'pong'}
    assert alpha['queues'] == ['q1', 'q2'] and result['workers']['beta@fleet']['queues'] == ['q2']
    assert alpha['stats']['pool']['max-concurrency'] == 2
    assert 'fleet_tasks.sleep' in alpha['registered']
    running = alpha['active'] or []
    assert [t['name'] for t in running] == ['fleet_tasks.sleep'], alpha['active']


def test_killed_worker_is_missing_and_extra_one_unexpected(broker, ansible, workers):
    url = broker.url
    keep = workers.start(url, 'keep@fleet', ['q1'])
    gone = workers.start(url, 'gone@fleet', ['q1'])
    workers.start(url, 'extra@fleet', ['q1'])
    gone.kill()
    result = info(ansible, broker_url=url, expected_nodes=['keep@fleet', 'gone@fleet'], timeout=1.5)
    assert result['online'] == ['extra@fleet', 'keep@fleet']
    assert result['missing'] == ['gone@fleet']
    assert result['unexpected'] == ['extra@fleet']
    assert result['count'] == 2
    assert keep.process.poll() is None


def test_two_workers_with_one_name_are_duplicates(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'twin@fleet', ['q1'])
    second = workers.start(url, 'twin@fleet', ['q2'], ready=isinstance(broker, RedisBroker))
    result = info(ansible, broker_url=url, expected_nodes=['twin@fleet'], timeout=3)
    assert result['online'] == ['twin@fleet'] and result['missing'] == []
    if isinstance(broker, RedisBroker):
        assert result['duplicates'] == ['twin@fleet']
    else:
        # Celery 5.7 declares a worker's pidbox queue exclusive on RabbitMQ: the broker refuses
        # the second worker of a name, which exits ("RESOURCE_LOCKED"); only one can answer.
        assert second.process.wait(30) != 0
        assert 'RESOURCE_LOCKED' in second.log()
        assert result['duplicates'] == []


def test_patterns_and_count(broker, ansible, workers):
    url = broker.url
    for name in ('a@web1', 'b@web1', 'c@web2'):
        workers.start(url, name, ['q1'])
    counted = info(ansible, broker_url=url, expected_nodes=['*@web1'], expected_count=3, timeout=10)
    assert counted['online'] == ['a@web1', 'b@web1', 'c@web2']
    assert counted['unexpected'] == ['c@web2'] and counted['missing'] == []
    assert counted['elapsed'] < 5
    none = info(ansible, broker_url=url, expected_nodes=['*@web3'], timeout=0.5)
    assert none['missing'] == ['*@web3']


def test_wait_until_a_started_worker_answers(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'late@fleet', ['q1'], ready=False)
    result = info(ansible, broker_url=url, expected_nodes=['late@fleet'], wait=True, wait_timeout=60,
                  wait_sleep=0.2, timeout=1)
    assert not result.get('failed'), result
    assert result['online'] == ['late@fleet']
    never = info(ansible, broker_url=url, expected_nodes=['late@fleet', 'never@fleet'], wait=True,
                 wait_timeout=2, wait_sleep=0.2, timeout=0.5)
    assert never['failed'] and 'never@fleet' in never['msg'] and 'wait_timeout' in never['msg']


def test_secrets_in_worker_conf_are_masked(redis_env, ansible, workers):
    url = redis_env.url
    workers.start(url, 'conf@fleet', ['q1'])
    result = info(ansible, broker_url=url, include=['conf'], expected_nodes=['conf@fleet'])
    conf = result['workers']['conf@fleet']['conf']
    assert conf['task_default_queue'] == 'fleet_default'
