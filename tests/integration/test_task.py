"""celery_task against real Celery workers on Redis and RabbitMQ, through ansible-playbook.

The tests of the module's own work on the brokers are marked module_logic (the oldest ansible-core runs only
those also marked mitogen); the option checks and the result_backend test (a return key Ansible may rename) are not.
"""

import json
import time

import pytest

from harness import RedisBroker, held_by_a_worker_gone, publish, recorded, wait_for


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    """The same tests on both brokers: a fresh Redis database or RabbitMQ vhost."""
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def task(ansible, check=False, diff=False, **args):
    return ansible.module('celery_task', args, check=check, diff=diff)


def queue_ids(broker, name):
    """The ids of a queue's ready messages in run order (Redis: step 0 only, enough for these tests)."""
    if isinstance(broker, RedisBroker):
        return [json.loads(raw)['headers']['id'] for raw in reversed(broker.client.lrange(name, 0, -1))]
    return broker.read_ids(name)


def untargeted(broker, exclude):
    """Byte-exact content of every key (Redis) or queue (RabbitMQ) but ``exclude``."""
    if isinstance(broker, RedisBroker):
        return dict((k, v) for k, v in broker.snapshot().items() if k not in exclude and not k.startswith(b'_kombu')
                    and b'pidbox' not in k)
    return dict((k, v) for k, v in broker.snapshot().items() if k not in exclude and 'pidbox' not in k
                and not k.startswith('celeryev'))


@pytest.mark.module_logic
@pytest.mark.mitogen
def test_revoke_by_name_removes_exactly_the_matching_messages(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'watch@tasks', ['other'])
    ids, mail = [], []
    for index in range(3):
        ids += publish(url, 'fleet_tasks.add', 'target', args=(index, 1))
        mail += publish(url, 'fleet_tasks.mail', 'target', args=('user%d@example.com' % index,))
    bystander = publish(url, 'fleet_tasks.mail', 'bystander', args=('keep@example.com',), count=2)
    exclude = (b'target', 'target') if isinstance(broker, RedisBroker) else ('target',)
    before = untargeted(broker, exclude)
    assert (b'bystander' if isinstance(broker, RedisBroker) else 'bystander') in before and len(bystander) == 2
    args = dict(broker_url=url, task_names=['fleet_tasks.mail'], queues=['target'], expected_nodes=['watch@tasks'],
                timeout=10)

    # Check mode lists exactly what would go, and sends nothing.
    result = task(ansible, check=True, diff=True, **args)
    assert not result.get('failed'), result
    assert result['changed'] is True
    assert result['removed'] == {'target': sorted(mail, key=mail.index)} or \
        sorted(result['removed']['target']) == sorted(mail), result
    assert sorted(result['revoked']) == sorted(mail)
    assert result['diff']['before']['queues'] == {'target': 3} and result['diff']['after']['queues'] == {'target': 0}
    assert queue_ids(broker, 'target') == [i for pair in zip(ids, mail) for i in pair]
    info = ansible.module('celery_task_info', dict(broker_url=url, ids=mail, expected_nodes=['watch@tasks'],
                                                   queues=['target'], timeout=10))
    assert all(t['revoked_on'] == [] for t in info['tasks']), info

    # The real run.
    result = task(ansible, diff=True, **args)
    assert not result.get('failed'), result
    assert result['changed'] is True
    assert sorted(result['removed']['target']) == sorted(mail) and sorted(result['revoked']) == sorted(mail)
    assert result['not_answering'] == [] and result['nodes'] == ['watch@tasks']
    assert result['diff']['after']['nodes']['watch@tasks']['revoked'] == 3, result['diff']
    assert queue_ids(broker, 'target') == ids   # the others kept, in order
    assert untargeted(broker, exclude) == before   # nothing else touched, byte for byte
    info = ansible.module('celery_task_info', dict(broker_url=url, ids=mail, expected_nodes=['watch@tasks'],
                                                   timeout=10))
    assert sorted(t['id'] for t in info['tasks']) == sorted(mail), info
    assert all(t['where'] == 'revoked' and t['revoked_on'] == ['watch@tasks'] for t in info['tasks']), info

    # Nothing left to do: by name, and by the ids already revoked on every answering node.
    result = task(ansible, **args)
    assert result['changed'] is False and result['revoked'] == [] and result['removed'] == {'target': []}, result
    result = task(ansible, broker_url=url, ids=mail, queues=['target'], expected_nodes=['watch@tasks'], timeout=10)
    assert result['changed'] is False, result


@pytest.mark.module_logic
def test_offline_worker_never_runs_the_removed_tasks(broker, ansible, workers, tmp_path, monkeypatch):
    url = broker.url
    record = str(tmp_path / 'ran')
    monkeypatch.setenv('FLEET_RECORD_FILE', record)
    workers.start(url, 'online@tasks', ['other'])
    submitted = publish(url, 'fleet_tasks.record', 'offline', count=4)
    revoked = submitted[1:3]
    result = task(ansible, broker_url=url, ids=revoked, queues=['offline'], expected_nodes=['online@tasks', 'late@tasks'],
                  timeout=3)
    assert not result.get('failed'), result
    assert sorted(result['removed']['offline']) == sorted(revoked), result
    # The node that did not answer is named: its revoke is not confirmed.
    assert result['missing'] == ['late@tasks'] and result['not_answering'] == ['late@tasks'], result
    # The worker of the queue was offline during the revoke, so it never heard it; it comes back now.
    workers.start(url, 'late@tasks', ['offline'])
    kept = [submitted[0], submitted[3]]
    wait_for(lambda: sorted(recorded(record)) == sorted(kept), what='the kept tasks to run')
    time.sleep(3)
    assert sorted(recorded(record)) == sorted(kept)


@pytest.mark.module_logic
def test_terminated_stops_a_running_task(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'prefork@tasks', ['run'], pool='prefork', concurrency=1)
    workers.start(url, 'threads@tasks', ['run2'], pool='threads', concurrency=1)
    running = publish(url, 'fleet_tasks.sleep', 'run', args=(300,))
    stays = publish(url, 'fleet_tasks.sleep', 'run2', args=(300,))
    nodes = ['prefork@tasks', 'threads@tasks']

    def both_active():
        found = ansible.module('celery_task_info', dict(broker_url=url, ids=running + stays, expected_nodes=nodes,
                                                        timeout=10))
        return len([t for t in found['tasks'] if t['where'] == 'active']) == 2
    wait_for(both_active, what='both tasks to run')
    args = dict(broker_url=url, task_names=['fleet_tasks.sleep'], older_than=0, state='terminated',
                expected_nodes=nodes, timeout=10)
    result = task(ansible, check=True, **args)
    assert result['changed'] is True and result['terminated'] == running, result
    result = task(ansible, **args)
    assert not result.get('failed'), result
    assert result['terminated'] == running
    assert result['cannot_terminate'] == [dict(node='threads@tasks', pool='threads', ids=stays)]
    assert any('threads@tasks' in w for w in result.get('warnings', [])), result
    info = ansible.module('celery_task_info', dict(broker_url=url, ids=running + stays, expected_nodes=nodes,
                                                   timeout=10))
    active = [t['id'] for t in info['tasks'] if t['where'] == 'active']
    assert active == stays, info
    # Done: the terminated task is gone and revoked; the threads one is revoked already (and still reported).
    result = task(ansible, **dict(args, ids=running))
    assert result['changed'] is False, result


@pytest.mark.parametrize('args, option', [
    (dict(queues=['q']), 'ids'),
    (dict(ids=[]), 'ids'),
    (dict(stamped_headers={}), 'stamped_headers'),
    (dict(ids=['x'], signal='NOPE'), 'signal'),
    (dict(ids=['x'], terminate_timeout=0), 'terminate_timeout'),
])
def test_bad_input_names_the_option_and_sends_nothing(redis_env, ansible, args, option):
    result = task(ansible, broker_url=redis_env.url, **args)
    assert result.get('failed') and result.get('option') == option, result


@pytest.mark.module_logic
def test_held_messages_reported_and_removed_only_when_asked(redis_env, ansible, workers):
    url = redis_env.url
    later = held_by_a_worker_gone(workers, redis_env, 'held', 'holder@tasks')
    args = dict(broker_url=url, ids=later, queues=['held'], timeout=0.5)
    result = task(ansible, **args)
    assert [h['id'] for h in result['held']] == later and result['removed_held'] == 0, result
    assert redis_env.client.hlen('unacked') == 1
    result = task(ansible, remove_held=True, **args)
    assert result['removed_held'] == 1 and result['changed'] is True, result
    assert redis_env.client.hlen('unacked') == 0 and redis_env.client.zcard('unacked_index') == 0
    result = task(ansible, remove_held=True, **args)
    assert result['held'] == [] and result['removed_held'] == 0, result


@pytest.mark.module_logic
def test_junk_in_the_queue_is_kept_and_no_worker_is_reported(redis_env, ansible):
    """Messages that cannot be decoded are never selected: they stay, in order, byte for byte."""
    url = redis_env.url
    redis_env.client.lpush('mixed', b'\xff\xfe not json')
    mail = publish(url, 'fleet_tasks.mail', 'mixed', args=('a@example.com',))
    redis_env.client.lpush('mixed', '[' * 100000, json.dumps({'headers': {'task': 5, 'id': mail[0]}}))
    before = redis_env.client.lrange('mixed', 0, -1)
    result = task(ansible, broker_url=url, task_names=['fleet_tasks.mail'], queues=['mixed'], timeout=0.3)
    assert not result.get('failed'), result
    assert result['removed'] == {'mixed': mail} and result['revoked'] == mail and result['nodes'] == []
    assert any('no worker answered' in w for w in result.get('warnings', [])), result
    assert redis_env.client.lrange('mixed', 0, -1) == [raw for raw in before if mail[0].encode() not in raw
                                                       or raw.startswith(b'{"headers"')]
    result = task(ansible, broker_url=url, task_names=['fleet_tasks.mail'], queues=['mixed'], timeout=0.3)
    assert result['changed'] is False, result


@pytest.mark.module_logic
def test_revoke_by_stamped_headers(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'stamps@tasks', ['other'])
    first = publish(url, 'fleet_tasks.add', 'stamped', args=(1, 1), count=2, stamped_headers=['batch'], batch='b1')
    other = publish(url, 'fleet_tasks.add', 'stamped', args=(2, 2), stamped_headers=['batch'], batch='b2')
    plain = publish(url, 'fleet_tasks.add', 'stamped', args=(3, 3))
    args = dict(broker_url=url, stamped_headers={'batch': 'b1'}, queues=['stamped'], expected_nodes=['stamps@tasks'],
                timeout=10)
    result = task(ansible, check=True, **args)
    assert sorted(result['removed']['stamped']) == sorted(first) and result['stamped_headers_sent'] is False, result
    result = task(ansible, **args)
    assert not result.get('failed'), result
    assert sorted(result['removed']['stamped']) == sorted(first) and result['stamped_headers_sent'] is True, result
    assert result['not_answering'] == [] and result['changed'] is True
    assert queue_ids(broker, 'stamped') == other + plain


@pytest.mark.module_logic
def test_every_priority_sub_queue_is_filtered_on_redis(redis_env, ansible):
    url = redis_env.url
    low = publish(url, 'fleet_tasks.mail', 'prio', args=('a',), priority=9)
    high = publish(url, 'fleet_tasks.mail', 'prio', args=('b',), priority=0)
    keep = publish(url, 'fleet_tasks.add', 'prio', args=(1, 1), priority=9)
    result = task(ansible, broker_url=url, task_names=['fleet_tasks.mail'], queues=['prio'], timeout=0.3)
    assert sorted(result['removed']['prio']) == sorted(low + high), result
    assert redis_env.client.llen('prio') == 0
    assert [json.loads(raw)['headers']['id'] for raw in redis_env.client.lrange('prio\x06\x169', 0, -1)] == keep


@pytest.mark.module_logic
def test_a_quorum_queue_is_refused_before_anything_is_sent(rabbit_env, ansible, workers):
    from test_adversarial_quorum import declare, send
    url = rabbit_env.url
    workers.start(url, 'quorum@tasks', ['other'])
    declare(rabbit_env, 'qq', 'quorum')
    ids = send(rabbit_env, 'qq', ['fleet_tasks.add'])
    result = task(ansible, broker_url=url, ids=ids, queues=['qq'], expected_nodes=['quorum@tasks'], timeout=10)
    assert result.get('failed') and result['option'] == 'queues' and 'quorum' in result['msg'], result
    info = ansible.module('celery_task_info', dict(broker_url=url, ids=ids, expected_nodes=['quorum@tasks'], timeout=10))
    assert info['not_found'] == ids and info['tasks'] == [], info   # no worker heard a revoke
    rabbit_env.wait_for('qq', lambda record: record.get('messages_ready') == 1)
