"""celery_task_info against real Celery workers on Redis and RabbitMQ, through ansible-playbook.

The tests of the module's own work on the brokers are marked module_logic (the oldest ansible-core runs only
those also marked mitogen); the option checks and the result_backend test (a return key Ansible may rename) are not.
"""

import base64
import json
import os
import pickle
import time
import uuid

import pytest

from harness import RedisBroker, held_by_a_worker_gone, publish


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    """The same tests on both brokers: a fresh Redis database or RabbitMQ vhost."""
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def info(ansible, **args):
    return ansible.module('celery_task_info', args)


@pytest.mark.module_logic
@pytest.mark.mitogen
def test_queued_task_is_found_at_its_position(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'idle@tasks', ['other'])
    first = publish(url, 'fleet_tasks.add', 'backlog', args=(1, 2))
    mail = publish(url, 'fleet_tasks.mail', 'backlog', args=('ops@example.com',))
    last = publish(url, 'fleet_tasks.add', 'backlog', args=(40, 2))
    result = info(ansible, broker_url=url, queues=['backlog'], task_names=['fleet_tasks.mail'],
                  expected_nodes=['idle@tasks'], timeout=10)
    assert not result.get('failed'), result
    assert result['changed'] is False
    assert result['nodes'] == ['idle@tasks'] and result['missing'] == []
    [entry] = result['tasks']
    assert (entry['id'], entry['name'], entry['where'], entry['queue'], entry['position']) == \
        (mail[0], 'fleet_tasks.mail', 'queued', 'backlog', 2)
    assert result['counts']['queued'] == 1 and result['counts']['total'] == 1
    assert result['queues'] == [dict(name='backlog', exists=True, messages=3, matched=1)]
    # A subset of the decoded arguments selects too; every selector must hold.
    result = info(ansible, broker_url=url, queues=['backlog'], args_contains=[2], expected_nodes=['idle@tasks'])
    assert [(t['id'], t['position']) for t in result['tasks']] == [(first[0], 1), (last[0], 3)], result
    result = info(ansible, broker_url=url, queues=['backlog'], args_contains=[40], task_names=['fleet_tasks.add'],
                  expected_nodes=['idle@tasks'])
    assert [t['id'] for t in result['tasks']] == last, result
    result = info(ansible, broker_url=url, queues=['backlog'], args_contains=[40], task_names=['fleet_tasks.mail'],
                  expected_nodes=['idle@tasks'])
    assert result['tasks'] == [], result
    # An id that is nowhere is not_found, not a match.
    missing = str(uuid.uuid4())
    result = info(ansible, broker_url=url, queues=['backlog'], ids=[missing, first[0]], expected_nodes=['idle@tasks'])
    assert [t['id'] for t in result['tasks']] == first and result['not_found'] == [missing], result


@pytest.mark.module_logic
def test_queued_position_follows_priorities_on_redis(redis_env, ansible):
    url = redis_env.url
    low = publish(url, 'fleet_tasks.add', 'prio', args=(1, 1), priority=9)
    high = publish(url, 'fleet_tasks.add', 'prio', args=(2, 2), priority=0)
    result = info(ansible, broker_url=url, queues=['prio'], task_names=['fleet_tasks.add'], timeout=0.3)
    assert [(t['id'], t['position'], t['priority_step']) for t in result['tasks']] == \
        [(high[0], 1, 0), (low[0], 2, 9)], result


@pytest.mark.module_logic
def test_eta_task_is_scheduled_and_a_sleeping_task_is_stuck(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'busy@tasks', ['work'], pool='threads', concurrency=2)
    later = publish(url, 'fleet_tasks.add', 'work', args=(1, 2), countdown=300)
    sleeping = publish(url, 'fleet_tasks.sleep', 'work', args=(300,))
    time.sleep(3)
    result = info(ansible, broker_url=url, ids=later + sleeping, expected_nodes=['busy@tasks'], timeout=10)
    assert not result.get('failed'), result
    where = dict((t['id'], t) for t in result['tasks'])
    assert where[later[0]]['where'] == 'scheduled' and where[later[0]]['node'] == 'busy@tasks'
    assert where[later[0]]['eta'], where[later[0]]
    assert where[sleeping[0]]['where'] == 'active' and where[sleeping[0]]['node'] == 'busy@tasks'
    assert where[sleeping[0]]['runtime'] >= 2, where[sleeping[0]]
    assert result['queues'] == [dict(name='work', exists=True, messages=0, matched=0)]  # the queues workers consume
    # older_than: the sleeping task is stuck, the scheduled one is not selected at all.
    result = info(ansible, broker_url=url, older_than=2, expected_nodes=['busy@tasks'], timeout=10)
    assert [t['id'] for t in result['stuck']] == sleeping, result
    assert result['counts']['stuck'] == 1 and result['counts']['scheduled'] == 0
    # A threshold fails the task, naming the option and the stuck task.
    result = info(ansible, broker_url=url, older_than=2, max_stuck=0, expected_nodes=['busy@tasks'], timeout=10)
    assert result.get('failed') and result['option'] == 'max_stuck', result
    assert sleeping[0] in result['msg'] and 'busy@tasks' in result['msg']
    assert [t['id'] for t in result['stuck']] == sleeping
    # Waiting for it to hold times out, naming the stuck task, with the last state in the result.
    result = info(ansible, broker_url=url, older_than=2, max_stuck=0, wait=True, wait_timeout=2, wait_sleep=0.5,
                  expected_nodes=['busy@tasks'], timeout=10)
    assert result.get('failed') and result['option'] == 'wait_timeout' and sleeping[0] in result['msg'], result
    assert [t['id'] for t in result['stuck']] == sleeping
    # Not stuck for an hour: the threshold holds.
    result = info(ansible, broker_url=url, older_than=3600, max_stuck=0, expected_nodes=['busy@tasks'], timeout=10)
    assert not result.get('failed') and result['stuck'] == [], result


def test_result_backend_states_never_unpickled(redis_env, ansible, tmp_path):
    url = redis_env.url
    done, pickled, queued = str(uuid.uuid4()), str(uuid.uuid4()), publish(url, 'fleet_tasks.add', 'rb', args=(1, 1))
    redis_env.client.set('celery-task-meta-' + done, json.dumps(
        {'status': 'SUCCESS', 'result': 3, 'date_done': '2026-01-01T00:00:00+00:00', 'task_id': done}))
    marker = tmp_path / 'unpickled'

    class Boom(object):
        def __reduce__(self):
            return (os.system, ('touch %s' % marker,))
    redis_env.client.set('celery-task-meta-' + pickled, pickle.dumps(Boom()))
    result = info(ansible, broker_url=url, queues=['rb'], ids=[done, pickled, queued[0]], result_backend=url,
                  timeout=0.3)
    assert not result.get('failed'), result
    assert result['result_states'] == {done: {'state': 'SUCCESS', 'date_done': '2026-01-01T00:00:00+00:00'},
                                       pickled: {'state': 'unknown', 'date_done': None}}
    assert sorted(result['not_found']) == sorted([done, pickled])
    assert result['tasks'][0]['result'] is None   # queued: nothing stored yet
    assert not marker.exists()
    # The broker's own Redis, without repeating its URL.
    result = info(ansible, broker_url=url, ids=[done], result_backend_broker=True, timeout=0.3)
    assert result['result_states'] == {done: {'state': 'SUCCESS', 'date_done': '2026-01-01T00:00:00+00:00'}}, result


@pytest.mark.module_logic
def test_hostile_messages_and_reprs_are_not_evaluated(redis_env, ansible, tmp_path):
    """Junk in a queue is skipped; an argsrepr that is code is not run (read back as a literal or not at all)."""
    url = redis_env.url
    marker = tmp_path / 'evaluated'
    good = publish(url, 'fleet_tasks.add', 'hostile', args=(7, 8))
    envelope = {'body': base64.b64encode(b'\x80\x04junk').decode(), 'content-type': 'application/x-python-serialize',
                'content-encoding': 'binary', 'properties': {'body_encoding': 'base64', 'priority': 0},
                'headers': {'task': 'fleet_tasks.add', 'id': 'evil', 'argsrepr': "__import__('os').system('touch %s')"
                            % marker, 'kwargsrepr': '{' * 5000}}
    redis_env.client.lpush('hostile', json.dumps(envelope), b'\xff\xfe not json', '[' * 100000)
    reprs = dict(envelope, headers=dict(envelope['headers'], id='repr-only', argsrepr='(7, 9)', kwargsrepr="{'to': 'x'}"))
    redis_env.client.lpush('hostile', json.dumps(reprs))
    result = info(ansible, broker_url=url, queues=['hostile'], args_contains=[7], timeout=0.3)
    assert not result.get('failed'), result
    assert sorted(t['id'] for t in result['tasks']) == sorted(good + ['repr-only']), result
    result = info(ansible, broker_url=url, queues=['hostile'], kwargs_contains={'to': 'x'}, timeout=0.3)
    assert [t['id'] for t in result['tasks']] == ['repr-only'], result
    assert result['queues'][0]['messages'] == 5
    assert not marker.exists()


@pytest.mark.parametrize('args, option', [
    (dict(ids=[]), 'ids'),
    (dict(task_names=['']), 'task_names'),
    (dict(older_than=-1), 'older_than'),
    (dict(max_stuck=0), 'max_stuck'),
    (dict(ids=['x'], result_backend='amqp://guest:s3cret@h//'), 'result_backend'),
    (dict(ids=['x'], timeout=0), 'timeout'),
])
def test_bad_input_names_the_option(redis_env, ansible, args, option):
    result = info(ansible, broker_url=redis_env.url, **args)
    assert result.get('failed') and result.get('option') == option, result
    assert 's3cret' not in json.dumps(result)


@pytest.mark.module_logic
def test_duplicate_ids_from_rabbitmq_read_leave_queue_in_order(rabbit_env, ansible):
    """On RabbitMQ a read gives every message back in its place."""
    url = rabbit_env.url
    ids = publish(url, 'fleet_tasks.add', 'order', args=(1, 1), count=5)
    result = info(ansible, broker_url=url, queues=['order'], ids=[ids[3]], timeout=0.3)
    assert [(t['id'], t['position']) for t in result['tasks']] == [(ids[3], 4)], result
    assert rabbit_env.read_ids('order') == ids


@pytest.mark.module_logic
def test_redis_untouched(redis_env, ansible):
    url = redis_env.url
    publish(url, 'fleet_tasks.add', 'still', args=(1, 1), count=3)
    before = RedisBroker(redis_env.db).snapshot()
    info(ansible, broker_url=url, queues=['still'], task_names=['fleet_tasks.add'], timeout=0.3)
    after = redis_env.snapshot()
    assert before == after


@pytest.mark.module_logic
def test_a_message_held_by_a_worker_gone_is_unacked_on_redis(redis_env, ansible, workers):
    url = redis_env.url
    later = held_by_a_worker_gone(workers, redis_env, 'held', 'gone@tasks')
    result = info(ansible, broker_url=url, ids=later, queues=['held'], timeout=0.3)
    assert [(t['id'], t['where'], t['queue']) for t in result['tasks']] == [(later[0], 'unacked', 'held')], result
    assert result['tasks'][0]['delivery_tag'] and result['counts']['unacked'] == 1
