"""celery_queue_info's `priorities` option, through ansible-playbook against a real Redis and RabbitMQ: which queues
get their map of ready messages per priority step (issue 16: a discovered broker of thousands of queues returned
thousands of maps that only repeat `messages`)."""

import pytest

from harness import publish


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic

ADD = 'fleet_tasks.add'
MAIL = 'fleet_tasks.mail'


def info(**args):
    return {'celeryops.fleet.celery_queue_info': args}


def ok(result):
    assert not result.get('failed'), (result.get('msg'), result)
    return result


def by_name(result):
    return dict((q['name'], q) for q in ok(result)['queues'])


@pytest.mark.mitogen
def test_redis_maps_by_default_all_and_used(redis_env, ansible):
    url = redis_env.url
    publish(url, ADD, 'plain', args=(1, 2), count=3)                   # step 0 only
    publish(url, ADD, 'prio', args=(1, 2), count=2)                    # step 0
    publish(url, MAIL, 'prio', args=('a@b',), count=1, priority=9)     # step 9
    publish(url, MAIL, 'high', args=('c@d',), count=2, priority=5)     # step 3 only

    discovered, discovered_all, named, named_used, waited = ansible.play([
        info(broker_url=url),
        info(broker_url=url, priorities='all'),
        info(broker_url=url, queues=['plain', 'prio', 'high', 'absent']),
        info(broker_url=url, queues=['plain', 'prio', 'high', 'absent'], priorities='used'),
        # The thresholds' polls describe the queues the same way.
        info(broker_url=url, max_messages=100, wait=True, wait_timeout=30),
    ])
    full = {'plain': {'0': 3, '3': 0, '6': 0, '9': 0}, 'prio': {'0': 2, '3': 0, '6': 0, '9': 1},
            'high': {'0': 0, '3': 2, '6': 0, '9': 0}, 'absent': {'0': 0, '3': 0, '6': 0, '9': 0}}

    # Discovered (auto is used): only queues with messages on a step other than 0 have a map; the rest null.
    queues = by_name(discovered)
    assert sorted(queues) == ['high', 'plain', 'prio']
    assert [(name, q['messages'], q['priorities']) for name, q in sorted(queues.items())] == [
        ('high', 2, full['high']), ('plain', 3, None), ('prio', 3, full['prio'])]
    assert queues['plain'] == dict(name='plain', exists=True, messages=3, unacked=0, consumers=None, priorities=None,
                                   source='redis')
    assert dict((name, q['priorities']) for name, q in by_name(waited).items()) == dict(
        plain=None, prio=full['prio'], high=full['high'])
    assert 'waited' in waited

    # priorities=all: every queue its map, zeros included; the other values are the same.
    every = by_name(discovered_all)
    assert dict((name, q['priorities']) for name, q in every.items()) == dict(
        (name, full[name]) for name in ('plain', 'prio', 'high'))
    assert dict((name, dict(q, priorities=None)) for name, q in every.items()) == dict(
        (name, dict(q, priorities=None)) for name, q in queues.items())

    # Named queues (auto is all): every map, the absent queue's zeros too.
    assert [(q['name'], q['exists'], q['priorities']) for q in ok(named)['queues']] == [
        (name, name != 'absent', full[name]) for name in ('plain', 'prio', 'high', 'absent')]
    # priorities=used on named queues: the empty and the step-0-only queues have none.
    assert [(q['name'], q['messages'], q['priorities']) for q in ok(named_used)['queues']] == [
        ('plain', 3, None), ('prio', 3, full['prio']), ('high', 2, full['high']), ('absent', 0, None)]


def test_redis_priorities_refuses_an_unknown_value(redis_env, ansible):
    result = ansible.module('celery_queue_info', dict(broker_url=redis_env.url, priorities='some'))
    assert result.get('failed'), result
    assert 'priorities' in result['msg'] and 'auto, all, used' in result['msg'], result['msg']


def test_rabbitmq_has_no_maps_whatever_priorities_says(rabbit_env, ansible):
    url = rabbit_env.url
    publish(url, ADD, 'work', args=(1, 2), count=2)
    publish(url, MAIL, 'work', args=('a@b',), count=1, priority=9)
    results = ansible.play([info(broker_url=url, queues=['work'], priorities=value) for value in ('auto', 'all', 'used')]
                           + [info(broker_url=url, priorities='all')])
    for result in results:
        work = by_name(result)['work']
        assert (work['messages'], work['priorities']) == (3, None), work
