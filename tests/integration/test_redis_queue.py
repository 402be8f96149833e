"""celery_queue (purge, filtered purge, trim) against a real Redis: exact effects, nothing else touched."""

from harness import publish

ADD = 'fleet_tasks.add'
MAIL = 'fleet_tasks.mail'
SLEEP = 'fleet_tasks.sleep'
SEP = b'\x06\x16'


def ids_in_run_order(client, queue, steps=(0, 3, 6, 9)):
    """Task ids of a queue in the order workers would take them (tail first, low steps first)."""
    import json
    out = []
    for step in steps:
        key = queue.encode() + (SEP + str(step).encode() if step else b'')
        out.extend(json.loads(raw)['headers']['id'] for raw in reversed(client.lrange(key, 0, -1)))
    return out


def queue_keys(queue):
    return [queue.encode()] + [queue.encode() + SEP + s for s in (b'3', b'6', b'9')]


def test_purge_check_real_idempotent_and_nothing_else_touched(redis_env, ansible, workers):
    url, client = redis_env.url, redis_env.client
    publish(url, ADD, 'junk', args=(1, 1), count=5)
    publish(url, MAIL, 'junk', args=('x',), count=3, priority=6)
    publish(url, ADD, 'keepme', args=(2, 2), count=4)
    client.set('unrelated', 'value')
    client.hset('unacked', 'fake-tag', '[{"headers": {}}, "junk", "junk"]')  # must survive
    before = redis_env.snapshot()
    untouched = redis_env.snapshot(exclude=queue_keys('junk'))

    args = dict(broker_url=url, queues=['junk'])
    check, real, again = ansible.play([
        {'celeryops.fleet.celery_queue': args, 'check_mode': True, 'diff': True},
        {'celeryops.fleet.celery_queue': args, 'diff': True},
        {'celeryops.fleet.celery_queue': args},
    ])
    assert check['changed'] is True
    assert check['queues'] == [dict(name='junk', exists=True, before=8, removed=8, after=0, unacked=1)]
    assert check['diff'] == dict(before={'junk': 8}, after={'junk': 0})
    assert real['changed'] is True
    assert real['queues'] == [dict(name='junk', exists=True, before=8, removed=8, after=0, unacked=1)]
    assert any('held unacknowledged' in w for w in real.get('warnings', []))
    assert again['changed'] is False and again['queues'][0]['removed'] == 0
    # Check mode changed nothing; the real run removed only the queue's own keys.
    after = redis_env.snapshot()
    assert after == untouched
    assert set(before) - set(after) == {b'junk', b'junk' + SEP + b'6'}


def test_filtered_purge_keeps_the_rest_in_order(redis_env, ansible):
    url, client = redis_env.url, redis_env.client
    for i in range(10):
        publish(url, ADD if i % 3 else MAIL, 'mixed', args=(i, i) if i % 3 else ('m%d' % i,))
    publish(url, MAIL, 'mixed', args=('hi',), count=2, priority=3)
    publish(url, MAIL, 'other', args=('o',), count=2)
    order = ids_in_run_order(client, 'mixed')
    untouched = redis_env.snapshot(exclude=queue_keys('mixed'))

    args = dict(broker_url=url, queues=['mixed'], task_names=[MAIL])
    check = ansible.module('celery_queue', args, check=True)
    assert check['changed'] is True and check['queues'][0]['removed'] == 6
    assert ids_in_run_order(client, 'mixed') == order

    real = ansible.module('celery_queue', args)
    assert real['queues'][0] == dict(name='mixed', exists=True, before=12, removed=6, after=6, unacked=0)
    import json
    kept = ids_in_run_order(client, 'mixed')
    tasks = dict((json.loads(raw)['headers']['id'], json.loads(raw)['headers']['task'])
                 for raw in client.lrange('mixed', 0, -1))
    assert set(tasks.values()) == {ADD}
    assert kept == [i for i in order if i in tasks]
    assert redis_env.snapshot(exclude=queue_keys('mixed')) == untouched
    assert ansible.module('celery_queue', args)['changed'] is False


def test_trim_oldest_and_newest(redis_env, ansible):
    url, client = redis_env.url, redis_env.client
    ids = publish(url, ADD, 'trimq', args=(1, 1), count=10)
    check = ansible.module('celery_queue', dict(broker_url=url, queues=['trimq'], state='trimmed', keep=6),
                           check=True)
    assert check['queues'][0]['removed'] == 4 and ids_in_run_order(client, 'trimq') == ids

    oldest = ansible.module('celery_queue', dict(broker_url=url, queues=['trimq'], state='trimmed', keep=6))
    assert oldest['changed'] and oldest['queues'][0]['removed'] == 4
    assert ids_in_run_order(client, 'trimq') == ids[4:]

    newest = ansible.module('celery_queue', dict(broker_url=url, queues=['trimq'], state='trimmed', keep=2,
                                                 drop='newest'))
    assert newest['queues'][0] == dict(name='trimq', exists=True, before=6, removed=4, after=2, unacked=0)
    assert ids_in_run_order(client, 'trimq') == ids[4:6]

    again = ansible.module('celery_queue', dict(broker_url=url, queues=['trimq'], state='trimmed', keep=2))
    assert again['changed'] is False


def test_trim_across_priority_steps(redis_env, ansible):
    url, client = redis_env.url, redis_env.client
    low = publish(url, ADD, 'pri', args=(1, 1), count=3)             # step 0 runs first
    high = publish(url, ADD, 'pri', args=(1, 1), count=3, priority=9)  # step 9 runs last
    result = ansible.module('celery_queue', dict(broker_url=url, queues=['pri'], state='trimmed', keep=4))
    assert result['queues'][0]['removed'] == 2
    assert ids_in_run_order(client, 'pri') == low[2:] + high
    result = ansible.module('celery_queue', dict(broker_url=url, queues=['pri'], state='trimmed', keep=1,
                                                 drop='newest'))
    assert ids_in_run_order(client, 'pri') == low[2:3]


def test_missing_queue_is_not_a_failure(redis_env, ansible):
    result = ansible.module('celery_queue', dict(broker_url=redis_env.url, queues=['ghost']))
    assert result['changed'] is False
    assert result['queues'] == [dict(name='ghost', exists=False, before=0, removed=0, after=0, unacked=0)]


def test_unacked_messages_are_reported_not_purged(redis_env, ansible, workers):
    url, client = redis_env.url, redis_env.client
    workers.start(url, 'hold1@fleet', ['held'], concurrency=1, prefetch=2)
    publish(url, SLEEP, 'held', args=(30,), count=5)
    import time
    deadline = time.monotonic() + 20
    while client.hlen('unacked') < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    unacked_before = client.hgetall('unacked')
    result = ansible.module('celery_queue', dict(broker_url=url, queues=['held']))
    assert result['queues'][0]['unacked'] == 2
    assert result['queues'][0]['removed'] == result['queues'][0]['before']
    assert any("queue 'held' has 2 messages held unacknowledged" in w for w in result['warnings'])
    assert client.hgetall('unacked') == unacked_before
