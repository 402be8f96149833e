"""celery_queue_info against a real Redis, with messages published by Celery and real workers."""

import pytest

from harness import publish


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic

ADD = 'fleet_tasks.add'
MAIL = 'fleet_tasks.mail'
SLEEP = 'fleet_tasks.sleep'


def by_name(result):
    return dict((q['name'], q) for q in result['queues'])


@pytest.mark.mitogen
def test_counts_priorities_peek_and_breakdown(redis_env, ansible):
    url = redis_env.url
    first = publish(url, ADD, 'work', args=(1, 2), count=3)
    publish(url, MAIL, 'work', args=('a@b',), count=2, priority=5)   # step 3
    high = publish(url, MAIL, 'work', args=('c@d',), count=1, priority=9)  # step 9
    publish(url, ADD, 'other', args=(0, 0), count=4)

    result = ansible.module('celery_queue_info', dict(broker_url=url, queues=['work', 'other', 'absent'],
                                                      peek=5, breakdown=True))
    assert not result.get('failed'), result
    assert result['changed'] is False
    queues = by_name(result)
    work = queues['work']
    assert work['exists'] is True
    assert work['messages'] == 6
    assert work['priorities'] == {'0': 3, '3': 2, '6': 0, '9': 1}
    assert work['unacked'] == 0
    assert work['consumers'] is None
    assert work['tasks'] == {ADD: 3, MAIL: 3}
    # Run order: step 0 first, oldest first within a step, then step 3, then step 9.
    assert [m['id'] for m in work['peek'][:3]] == first
    assert [m['priority_step'] for m in work['peek']] == [0, 0, 0, 3, 3]
    assert work['peek'][0]['task'] == ADD and work['peek'][0]['argsrepr'] == '(1, 2)'
    assert high[0] not in [m['id'] for m in work['peek']]
    assert queues['other']['messages'] == 4
    assert queues['absent'] == dict(name='absent', exists=False, messages=0, unacked=0, consumers=None,
                                    priorities={'0': 0, '3': 0, '6': 0, '9': 0}, source='redis', peek=[], tasks={}, undecodable=0)
    assert result['broker'] == dict(transport='redis', tls=False, host='127.0.0.1', port=6379,
                                    db=redis_env.db, user=None)


def test_discovery_leaves_out_internals(redis_env, ansible, workers):
    url = redis_env.url
    workers.start(url, 'disc1@fleet', ['alpha', 'beta'])
    publish(url, ADD, 'gamma', args=(1, 1))
    found = ansible.module('celery_queue_info', dict(broker_url=url))
    assert [q['name'] for q in found['queues']] == ['alpha', 'beta', 'gamma']
    everything = ansible.module('celery_queue_info', dict(broker_url=url, include_internal=True))
    names = [q['name'] for q in everything['queues']]
    assert 'disc1@fleet.celery.pidbox' in names
    assert {'alpha', 'beta', 'gamma'} <= set(names)


def test_global_keyprefix(redis_env, ansible):
    url = redis_env.url
    publish(url, ADD, 'pq', args=(1, 1), count=2, priority=6, global_keyprefix='tenant1:')
    assert redis_env.client.llen('tenant1:pq\x06\x166') == 2
    plain = ansible.module('celery_queue_info', dict(broker_url=url))
    assert plain['queues'] == []
    prefixed = ansible.module('celery_queue_info', dict(broker_url=url, global_keyprefix='tenant1:', breakdown=True))
    assert [(q['name'], q['messages'], q['priorities']['6'], q['tasks']) for q in prefixed['queues']] == [
        ('pq', 2, 2, {ADD: 2})]


def test_custom_priority_steps_and_sep(redis_env, ansible):
    client = redis_env.client
    publish(redis_env.url, ADD, 'steps', args=(1, 1))
    raw = client.lrange('steps', 0, 0)[0]
    client.lpush('steps:1', raw)
    client.lpush('steps:1', raw)
    result = ansible.module('celery_queue_info', dict(broker_url=redis_env.url, queues=['steps'],
                                                      priority_steps=[0, 1], sep=':'))
    assert result['queues'][0]['messages'] == 3
    assert result['queues'][0]['priorities'] == {'0': 1, '1': 2}


def test_unacked_attributed_to_its_queue(redis_env, ansible, workers):
    url = redis_env.url
    workers.start(url, 'busy1@fleet', ['slow'], concurrency=1, prefetch=3)
    publish(url, SLEEP, 'slow', args=(30,), count=6)
    publish(url, ADD, 'idle', args=(1, 1), count=2)
    result = ansible.module('celery_queue_info', dict(
        broker_url=url, queues=['slow', 'idle'], max_unacked=0, wait=True, wait_timeout=1, wait_sleep=0.2))
    # The worker holds 1 running + 2 prefetched = 3 (prefetch 3 x concurrency 1).
    assert result['failed']
    assert "queue 'slow' has 3 unacked messages (max_unacked 0)" in result['msg']
    queues = by_name(result)
    assert queues['slow']['unacked'] == 3
    # kombu may hold one more popped message in the worker before it reaches the unacked
    # hash; every other message is either ready or unacked.
    assert queues['slow']['messages'] in (2, 3)
    assert queues['idle']['unacked'] == 0


def test_wait_until_drained(redis_env, ansible, workers):
    url = redis_env.url
    publish(url, ADD, 'drainme', args=(1, 1), count=20)
    workers.start(url, 'drain1@fleet', ['drainme'], concurrency=2)
    result = ansible.module('celery_queue_info', dict(
        broker_url=url, queues=['drainme'], max_messages=0, max_unacked=0, wait=True, wait_timeout=60,
        wait_sleep=0.2))
    assert not result.get('failed'), result
    assert result['queues'][0]['messages'] == 0
    assert 'waited' in result


def test_wait_times_out_naming_queue_and_last_value(redis_env, ansible):
    url = redis_env.url
    publish(url, ADD, 'stuck', args=(1, 1), count=7)
    result = ansible.module('celery_queue_info', dict(
        broker_url=url, queues=['stuck'], max_messages=2, wait=True, wait_timeout=1.5, wait_sleep=0.3))
    assert result['failed']
    assert 'wait_timeout' in result['msg']
    assert "queue 'stuck' has 7 ready messages (max_messages 2)" in result['msg']
    assert result['queues'][0]['messages'] == 7


def test_threshold_without_wait_checks_once(redis_env, ansible):
    url = redis_env.url
    publish(url, ADD, 'gate', args=(1, 1), count=3)
    ok = ansible.module('celery_queue_info', dict(broker_url=url, queues=['gate'], max_messages=3))
    assert not ok.get('failed'), ok
    over = ansible.module('celery_queue_info', dict(broker_url=url, queues=['gate'], max_messages=2))
    assert over['failed'] and "queue 'gate' has 3 ready messages (max_messages 2)" in over['msg']


def test_module_defaults_group_and_env_fallback(redis_env, ansible):
    url = redis_env.url
    publish(url, ADD, 'grp', args=(1, 1), count=2)
    results = ansible.play([{'celeryops.fleet.celery_queue_info': {'queues': ['grp']}}],
                           play_extra={'module_defaults': {'group/celeryops.fleet.celery': {'broker_url': url}}})
    assert results[0]['queues'][0]['messages'] == 2
    results = ansible.play([{'celeryops.fleet.celery_queue_info': {'queues': ['grp']}}],
                           env={'CELERY_BROKER_URL': url})
    assert results[0]['queues'][0]['messages'] == 2


def test_check_mode_is_read_only(redis_env, ansible):
    url = redis_env.url
    publish(url, ADD, 'ro', args=(1, 1), count=5)
    before = redis_env.snapshot()
    result = ansible.module('celery_queue_info', dict(broker_url=url, peek=3, breakdown=True), check=True)
    assert result['changed'] is False and result['queues'][0]['messages'] == 5
    assert redis_env.snapshot() == before


def test_unacked_attribution_through_exchange_bindings(redis_env, ansible):
    """Unacked entries name an exchange and routing key; the binding sets say which queue."""
    client, sep = redis_env.client, '\x06\x16'
    publish(redis_env.url, ADD, 'mailq', args=(1, 1))
    raw = client.lrange('mailq', 0, 0)[0].decode()
    # Queue 'mailq' bound to exchange 'tasks' with routing key 'mail.send'; 'reportq' with 'report.build'.
    client.sadd('_kombu.binding.tasks', 'mail.send' + sep + '' + sep + 'mailq',
                'report.build' + sep + '' + sep + 'reportq')
    entries = {'t1': '[%s, "tasks", "mail.send"]' % raw, 't2': '[%s, "tasks", "mail.send"]' % raw,
               't3': '[%s, "tasks", "report.build"]' % raw, 't4': '[%s, "", "mailq"]' % raw,
               't5': '[%s, "nowhere", "x"]' % raw}
    client.hset('unacked', mapping=entries)
    result = ansible.module('celery_queue_info', dict(broker_url=redis_env.url, queues=['mailq', 'reportq']))
    queues = by_name(result)
    assert queues['mailq']['unacked'] == 3
    assert queues['reportq']['unacked'] == 1
    assert queues['reportq']['exists'] is True and queues['reportq']['messages'] == 0


def test_discovery_reads_kombu_57_permanent_bindings(redis_env, ansible):
    """A queue known only from _kombu.binding_permanent.* is found; _kombu.binding_deadlines is no exchange."""
    client, sep = redis_env.client, '\x06\x16'
    client.sadd('_kombu.binding_permanent.perm', 'perm' + sep + sep + 'perm')
    client.zadd('_kombu.binding_deadlines', {'perm': 1})
    client.sadd('_kombu.binding.celery.pidbox', sep + sep + 'w1@h.celery.pidbox')
    client.sadd('_kombu.binding.celeryev', 'worker.#' + sep + sep + 'celeryev.1234')
    client.sadd('_kombu.binding.reply.celery.pidbox', 'abc' + sep + sep + 'abc.reply.celery.pidbox')
    result = ansible.module('celery_queue_info', dict(broker_url=redis_env.url))
    assert [q['name'] for q in result['queues']] == ['perm']
    assert result['queues'][0]['exists'] is True
    everything = ansible.module('celery_queue_info', dict(broker_url=redis_env.url, include_internal=True))
    assert [q['name'] for q in everything['queues']] == [
        'abc.reply.celery.pidbox', 'celeryev.1234', 'perm', 'w1@h.celery.pidbox']


def test_breakdown_names_awkward_elements_like_the_decoder(redis_env, ansible):
    """Counting runs in Redis; what it cannot name plainly is named by the header decoder."""
    import base64
    import json
    client = redis_env.client
    publish(redis_env.url, ADD, 'odd', args=(1, 1), count=3)
    legacy_body = base64.b64encode(json.dumps({'task': 'legacy.task', 'id': 'x', 'args': [], 'kwargs': {}}).encode())
    client.lpush('odd', *[
        json.dumps({'body': legacy_body.decode(), 'content-type': 'application/json', 'headers': {},
                    'properties': {'body_encoding': 'base64'}}),
        json.dumps({'body': '', 'headers': {'task': 't"q'}}),
        json.dumps({'body': '', 'headers': {'task': ''}}),
        'not json at all',
        json.dumps({'body': '', 'headers': {'task': 'compact.t'}}, separators=(',', ':')),
        json.dumps({'body': '', 'headers': {'task': 'caf\u00e9'}}),
        json.dumps({'body': '', 'headers': {'task': 'caf\u00e9'}}, ensure_ascii=False).encode('utf-8'),
    ])
    result = ansible.module('celery_queue_info', dict(broker_url=redis_env.url, queues=['odd'], breakdown=True))
    expected = {ADD: 3, 'legacy.task': 1, 't"q': 1, '<unknown>': 1, 'compact.t': 1, 'caf\u00e9': 2}
    assert result['queues'][0]['tasks'] == expected and result['queues'][0]['undecodable'] == 1  # 'not json at all'


def test_breakdown_and_peek_read_long_lists_whole(redis_env, ansible):
    """Lists longer than one read (READ_CHUNK, 2000 elements in _redis_queues): an exact multiple of
    it, one more than a multiple, and the shortest list that needs a second read."""
    import json
    client = redis_env.client
    sizes = {'long': (4000, 0), 'long\x06\x163': (4001, 3), 'long\x06\x166': (2001, 6)}
    expected = {}
    for key, (size, step) in sizes.items():
        names = ['t.%d.%d' % (step, i % 3) for i in range(size)]
        for name in names:
            expected[name] = expected.get(name, 0) + 1
        client.rpush(key, *[json.dumps({'body': '', 'headers': {'task': name, 'id': '%s-%d' % (key, i)}})
                            for i, name in enumerate(names)])
    # A kombu worker takes from the tail, so the first to run is the last element of step 0.
    first = json.loads(client.lindex('long', -1))['headers']['id']
    before = dict((key, client.lrange(key, 0, -1)) for key in sizes)
    result = ansible.module('celery_queue_info',
                            dict(broker_url=redis_env.url, queues=['long'], peek=2, breakdown=True))
    queue = result['queues'][0]
    assert queue['messages'] == 10002
    assert queue['priorities'] == {'0': 4000, '3': 4001, '6': 2001, '9': 0}
    assert queue['tasks'] == expected and sum(expected.values()) == 10002
    assert [m['id'] for m in queue['peek']] == [first, json.loads(client.lindex('long', -2))['headers']['id']]
    assert dict((key, client.lrange(key, 0, -1)) for key in sizes) == before
    # The reads left the connection pool sound: a second run reads the same.
    again = ansible.module('celery_queue_info', dict(broker_url=redis_env.url, queues=['long'], breakdown=True))
    assert again['queues'][0]['tasks'] == expected


def held_by_route(client):
    """(exchange, routing key) -> number of entries in the raw unacked hash."""
    import json
    counts = {}
    for raw in client.hvals('unacked'):
        route = tuple(json.loads(raw)[1:])
        counts[route] = counts.get(route, 0) + 1
    return counts


def test_unacked_routed_through_topic_and_fanout_exchanges(redis_env, ansible, workers):
    """Held messages are attributed the way kombu routes them (and would restore them): a topic exchange by
    its binding patterns, a fanout exchange to every queue bound to it. A Celery worker holds two messages
    sent through a topic exchange; a kombu consumer holds one received through a fanout exchange."""
    import time
    from kombu import Connection, Exchange, Queue
    from harness import celery_app
    url, client = redis_env.url, redis_env.client
    topic = Exchange('fleet.topic', type='topic')
    reports = Queue('reports', topic, routing_key='report.#')
    weekly = Queue('weekly', topic, routing_key='*.weekly')   # bound, but report.daily is not for it
    workers.start(url, 'topic1@fleet', ['reports'], concurrency=1, prefetch=2)
    app = celery_app(url)
    with app.producer_or_acquire() as producer:
        for _i in range(4):
            app.send_task(SLEEP, args=(60,), exchange=topic, routing_key='report.daily', declare=[reports, weekly],
                          producer=producer)
    deadline = time.monotonic() + 30
    while held_by_route(client).get(('fleet.topic', 'report.daily'), 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)

    fanout = Exchange('fleet.bcast', type='fanout')
    all_news = Queue('bcast.a', fanout, routing_key='#')
    other = Queue('bcast.b', fanout, routing_key='b')
    got = []
    with Connection(url) as connection:
        other(connection.default_channel).declare()
        with connection.Consumer([all_news], callbacks=[lambda body, message: got.append(message)], accept=['json']):
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                # Fanout goes through PUBLISH: a message sent before the consumer subscribed is lost, so send
                # until one arrives. It is not acknowledged: kombu holds it in the unacked hash.
                with Connection(url) as sender:
                    sender.Producer().publish({'n': 1}, exchange=fanout, routing_key='news', serializer='json',
                                              declare=[fanout])
                try:
                    connection.drain_events(timeout=1)
                except Exception:  # a timeout: send again
                    pass
            held = held_by_route(client)
            names = ['reports', 'weekly', 'bcast.a', 'bcast.b']
            info = ansible.module('celery_queue_info', dict(broker_url=url, queues=names))
            purge = ansible.module('celery_queue', dict(broker_url=url, queues=['reports']), check=True)
    assert held[('fleet.topic', 'report.daily')] == 2 and held[('fleet.bcast', 'news')] == 1, held
    assert sum(held.values()) == 3
    queues = by_name(info)
    assert queues['reports']['unacked'] == 2
    assert queues['weekly']['unacked'] == 0
    assert queues['bcast.a']['unacked'] == 1 and queues['bcast.b']['unacked'] == 1
    assert purge['queues'][0]['unacked'] == 2
