"""Issue 13, item 7: a malformed message never crashes the queue modules, through ansible-playbook.

A queue holds real Celery tasks beside poison: a body of '[' * 200000 (json.loads recursed until
RecursionError) and a task header that is a list (a dict key: "unhashable type: 'list'"). Peek,
breakdown and a purge by task names all succeed; the poison is counted as undecodable, shown with
an error in a peek, and kept by the purge. Worker replies and events: see test_adversarial_transport
for the wire, test_worker_info and test_events for rogue workers.
"""

import datetime
import decimal
import json

import pika

from harness import AMQP_PORT, publish

ADD = 'fleet_tasks.add'
MAIL = 'fleet_tasks.mail'
DEEP = '[' * 200000
LIST_TASK = json.dumps({'headers': {'task': ['x']}, 'body': ''})


def ok(result):
    assert not result.get('failed'), (result.get('msg'), result.get('module_stderr', '')[-2000:])
    return result


def poisoned_redis_queue(env):
    publish(env.url, ADD, 'poison', args=(1, 2), count=3)
    env.client.lpush('poison', DEEP, LIST_TASK)   # LPUSH: they run after the tasks published before them
    publish(env.url, MAIL, 'poison', args=('a@b',), count=2)


def test_redis_poison_is_counted_peeked_and_kept(redis_env, ansible):
    poisoned_redis_queue(redis_env)
    before = redis_env.client.lrange('poison', 0, -1)

    result = ok(ansible.module('celery_queue_info', dict(broker_url=redis_env.url, queues=['poison'], peek=10,
                                                         breakdown=True)))
    queue = result['queues'][0]
    assert queue['messages'] == 7
    assert queue['tasks'] == {ADD: 3, MAIL: 2} and queue['undecodable'] == 2
    assert [m['task'] for m in queue['peek']] == [ADD] * 3 + [None, None] + [MAIL] * 2
    deep, listed = queue['peek'][3], queue['peek'][4]
    assert 'nested deeper than 64 levels' in deep['error']
    assert listed['error'] == 'not a Celery task message: the task name is not a string (list)'
    assert 'error' not in queue['peek'][0]
    assert redis_env.client.lrange('poison', 0, -1) == before   # an _info module changes nothing

    checked = ok(ansible.module('celery_queue', dict(broker_url=redis_env.url, queues=['poison'],
                                                     task_names=[ADD, MAIL]), check=True))
    assert checked['queues'][0]['removed'] == 5 and redis_env.client.lrange('poison', 0, -1) == before
    purged = ok(ansible.module('celery_queue', dict(broker_url=redis_env.url, queues=['poison'],
                                                    task_names=[ADD, MAIL])))
    assert purged['queues'][0]['removed'] == 5 and purged['changed']
    assert redis_env.client.lrange('poison', 0, -1) == [LIST_TASK.encode(), DEEP.encode()]


def test_redis_poison_alone_in_a_breakdown_chunk(redis_env, ansible):
    """Only poison (no task the fast path could name in the same read)."""
    redis_env.client.rpush('only', DEEP, LIST_TASK, 'not json at all', json.dumps({'headers': {}, 'body': ''}))
    queue = ok(ansible.module('celery_queue_info', dict(broker_url=redis_env.url, queues=['only'], breakdown=True,
                                                        peek=4)))['queues'][0]
    assert queue['tasks'] == {'<unknown>': 1} and queue['undecodable'] == 3
    assert [m['task'] for m in queue['peek']] == ['<unknown>', None, None, None]


def amqp_publish(env, queue, messages):
    connection = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', AMQP_PORT, env.vhost,
                                                                   pika.PlainCredentials('guest', 'guest')))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body, headers in messages:
            channel.basic_publish('', queue, body, pika.BasicProperties(
                content_type='application/json', content_encoding='utf-8', headers=headers, delivery_mode=2))
    finally:
        connection.close()


def test_rabbitmq_poison_is_counted_peeked_and_kept(rabbit_env, ansible):
    """pika hands header tables over with lists, tables, bytes, Decimals and datetimes in them."""
    publish(rabbit_env.url, ADD, 'poison', args=(1, 2), count=2)
    amqp_publish(rabbit_env, 'poison', [
        (b'[[], {}, {}]', {'task': ['x'], 'id': 'list-task'}),
        (DEEP.encode(), {'id': 'deep-body'}),
        (b'[[], {}, {}]', {'task': 'odd.headers', 'id': decimal.Decimal('1.5'), 'retries': 'many',
                           'eta': datetime.datetime(2030, 1, 2, 3, 4, 5), 'argsrepr': b'(1,)', 'origin': [1, 2],
                           'kwargsrepr': {'a': b'\xff'}}),
    ])
    publish(rabbit_env.url, MAIL, 'poison', args=('a@b',))
    rabbit_env.wait_for('poison', lambda q: q.get('messages_ready') == 6)

    result = ok(ansible.module('celery_queue_info', dict(broker_url=rabbit_env.url, queues=['poison'], peek=6,
                                                         breakdown=True)))
    queue = result['queues'][0]
    # The deep body is a message whose headers name no task: <unknown>, and its body is never parsed.
    assert queue['tasks'] == {ADD: 2, '<unknown>': 1, 'odd.headers': 1, MAIL: 1} and queue['undecodable'] == 1
    assert [m['task'] for m in queue['peek']] == [ADD, ADD, None, '<unknown>', 'odd.headers', MAIL]
    assert queue['peek'][2]['error'] == 'not a Celery task message: the task name is not a string (list)'
    odd = queue['peek'][4]
    assert (odd['id'], odd['eta'], odd['argsrepr'], odd['origin'], odd['kwargsrepr'], odd['retries']) == (
        '1.5', '2030-01-02T03:04:05+00:00', '(1,)', None, None, None)

    purged = ok(ansible.module('celery_queue', dict(broker_url=rabbit_env.url, queues=['poison'],
                                                    task_names=[ADD, MAIL, 'x'])))
    assert purged['queues'][0]['removed'] == 3
    kept = [m['properties']['headers'].get('task') for m in rabbit_env.messages('poison')]
    assert kept == [['x'], None, 'odd.headers']
