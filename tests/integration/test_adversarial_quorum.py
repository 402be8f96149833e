"""Issue 13, items 8 and 15: reads of RabbitMQ quorum and stream queues, through ansible-playbook.

A read (peek, breakdown, purge by task_names, trim) consumes messages without acking and requeues
them. On a quorum queue every requeue counts as a delivery (a message over ``x-delivery-limit`` is
dropped or dead-lettered) and goes to the back of the queue; a stream cannot be read that way at all.
The modules refuse to read such queues, with or without the management API, and still purge them.

The broker's own views used elsewhere (the management API's get with requeue) would themselves
reorder a quorum queue and count deliveries: here the counts come from a passive declare, and the
content from consuming and acking everything, once, at the very end of a test.
"""

import json
import time
import urllib.parse
import uuid

import pika
import pytest

from harness import AMQP_PORT, management, publish


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic

ADD = 'fleet_tasks.add'
MAIL = 'fleet_tasks.mail'
REFUSED = 'RabbitMQ counts each requeue as a delivery'


def info(**args):
    return {'celeryops.fleet.celery_queue_info': args}


def change(**args):
    return {'celeryops.fleet.celery_queue': args}


def refused(result, queue, option, kind='quorum'):
    """The clear refusal: names the queue, the option, why, and what still works; no traceback.
    ``kind`` None: the module could not ask the management API, the broker told it."""
    assert result.get('failed'), result
    msg = result['msg']
    assert 'Traceback' not in msg, msg
    expected = ["queue '%s'" % queue, option + ':', REFUSED, 'reorder or drop messages', 'Nothing was read']
    expected += {'quorum': ['is a quorum queue', 'purge without task_names (queue.purge) still works'],
                 'stream': ['is a stream', 'cannot be purged either'],
                 None: ['not a classic queue', 'purge without task_names (queue.purge) still works']}[kind]
    for text in expected:
        assert text in msg, (text, msg)
    assert result.get('changed') is False, result
    return result


def declare(env, name, kind, **arguments):
    """A durable queue of ``kind`` (classic, quorum, stream) in the test's vhost."""
    arguments['x-queue-type'] = kind
    management('PUT', '/api/queues/%s/%s' % (env.qvhost, urllib.parse.quote(name, safe='')),
               {'durable': True, 'auto_delete': False, 'arguments': arguments})


def connect(env):
    return pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', AMQP_PORT, env.vhost,
                                                             pika.PlainCredentials('guest', 'guest')))


def opened(where):
    """A connection to ``where``: the test's vhost (an env), or what a function returns (a node of a cluster)."""
    return where() if callable(where) else connect(where)


def send(env, name, tasks):
    """Publish Celery protocol 2 messages (task name, id headers) straight to ``name``, confirmed;
    returns their ids in send order. Celery itself would redeclare the queue as a classic one."""
    ids = []
    connection = opened(env)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for task in tasks:
            task_id = str(uuid.uuid4())
            channel.basic_publish('', name, json.dumps([[1, 2], {}, {}]).encode(), pika.BasicProperties(
                content_type='application/json', content_encoding='utf-8', delivery_mode=2,
                headers={'task': task, 'id': task_id, 'lang': 'py', 'argsrepr': '(1, 2)', 'kwargsrepr': '{}'}))
            ids.append(task_id)
    finally:
        connection.close()
    return ids


def ready(env, name):
    """Ready messages now, from a passive declare (which neither delivers nor requeues)."""
    connection = opened(env)
    try:
        return connection.channel().queue_declare(name, passive=True).method.message_count
    finally:
        connection.close()


def drain(env, name, quiet=2):
    """Every message's task id, in delivery order, each acked: the end of the queue's story (after ``quiet``
    seconds without a delivery)."""
    ids = []
    connection = opened(env)
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)
        for method, properties, _body in channel.consume(name, inactivity_timeout=quiet):
            if method is None:
                break
            ids.append(properties.headers['id'])
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
    finally:
        connection.close()
    return ids


def test_peek_and_breakdown_of_a_quorum_queue_with_a_delivery_limit_lose_nothing(rabbit_env, ansible):
    url = rabbit_env.url
    declare(rabbit_env, 'limited', 'quorum', **{'x-delivery-limit': 2})
    ids = send(rabbit_env, 'limited', [ADD, MAIL, ADD, ADD, MAIL, ADD])

    # Four breakdowns in a row were 6, 6, 6 then 0 messages before, each "changed: false".
    results = ansible.play([info(broker_url=url, queues=['limited'], breakdown=True)] * 4
                           + [info(broker_url=url, queues=['limited'], peek=2)] * 4)
    for result in results[:4]:
        refused(result, 'limited', 'breakdown')
    for result in results[4:]:
        refused(result, 'limited', 'peek')
        # What the refusal reports was counted before, without reading.
        assert [(q['name'], q['messages'], q['type']) for q in result['queues']] == [('limited', 6, 'quorum')]
    assert ready(rabbit_env, 'limited') == 6
    assert drain(rabbit_env, 'limited') == ids


def test_peek_leaves_a_quorum_queue_in_its_order(rabbit_env, ansible):
    url = rabbit_env.url
    declare(rabbit_env, 'ordered', 'quorum')
    ids = send(rabbit_env, 'ordered', [ADD] * 6)
    refused(ansible.module('celery_queue_info', dict(broker_url=url, queues=['ordered'], peek=2)), 'ordered', 'peek')
    assert drain(rabbit_env, 'ordered') == ids  # it was 3, 4, 5, 6, 1, 2


def test_filtered_purge_and_trim_of_a_quorum_queue_are_refused_and_a_purge_works(rabbit_env, ansible):
    url = rabbit_env.url
    declare(rabbit_env, 'qq', 'quorum', **{'x-delivery-limit': 2})
    send(rabbit_env, 'qq', [ADD, MAIL, ADD, MAIL, ADD, ADD])
    classic = publish(url, ADD, 'plain', args=(1, 1), count=3)

    filtered, filtered_check, trim, trim_check, both = ansible.play([
        change(broker_url=url, queues=['qq'], task_names=[MAIL]),
        dict(change(broker_url=url, queues=['qq'], task_names=[MAIL]), check_mode=True),
        change(broker_url=url, queues=['qq'], state='trimmed', keep=2),
        dict(change(broker_url=url, queues=['qq'], state='trimmed', keep=2), check_mode=True),
        # The classic queue comes first: it is not touched either.
        change(broker_url=url, queues=['plain', 'qq'], task_names=[ADD]),
    ])
    for result in (filtered, filtered_check, both):
        refused(result, 'qq', 'task_names')
    for result in (trim, trim_check):
        refused(result, 'qq', 'state=trimmed')
    assert both['queues'] == [] and 'pending' not in both
    assert ready(rabbit_env, 'qq') == 6
    assert drain(rabbit_env, 'plain') == classic

    purge, again = ansible.play([change(broker_url=url, queues=['qq']), change(broker_url=url, queues=['qq'])])
    assert not purge.get('failed'), purge
    assert purge['changed'] is True
    assert purge['queues'] == [dict(name='qq', exists=True, before=6, removed=6, after=0, unacked=0, type='quorum')]
    assert again['changed'] is False and again['queues'][0]['before'] == 0
    assert ready(rabbit_env, 'qq') == 0


def test_type_is_reported_per_queue(rabbit_env, ansible):
    url = rabbit_env.url
    publish(url, ADD, 'classic_q', args=(1, 1), count=2)
    declare(rabbit_env, 'quorum_q', 'quorum')
    declare(rabbit_env, 'stream_q', 'stream')
    send(rabbit_env, 'quorum_q', [ADD])
    send(rabbit_env, 'stream_q', [ADD])
    names = ['classic_q', 'quorum_q', 'stream_q', 'absent_q']

    named, discovered, blind, purged, stream_read, stream_purge = ansible.play([
        info(broker_url=url, queues=names),
        info(broker_url=url),
        info(broker_url=url, queues=names, management_url='http://127.0.0.1:9'),
        dict(change(broker_url=url, queues=['classic_q', 'quorum_q', 'absent_q']), check_mode=True),
        info(broker_url=url, queues=['classic_q', 'stream_q'], peek=1),
        change(broker_url=url, queues=['classic_q', 'stream_q']),
    ])
    types = dict(classic_q='classic', quorum_q='quorum', stream_q='stream', absent_q=None)
    assert [(q['name'], q['type']) for q in named['queues']] == list(types.items()), named
    assert dict((q['name'], q['type']) for q in discovered['queues']) == dict(
        (name, kind) for name, kind in types.items() if kind)
    # Without the management API nobody said; nothing was read to find out.
    assert [(q['name'], q['type']) for q in blind['queues']] == [(name, None) for name in names], blind
    assert [(q['name'], q['type']) for q in purged['queues']] == [
        ('classic_q', 'classic'), ('quorum_q', 'quorum'), ('absent_q', None)], purged
    refused(stream_read, 'stream_q', 'peek', kind='stream')
    assert 'peek' not in stream_read['queues'][0]  # the classic queue before it was not read either
    assert stream_purge.get('failed') and stream_purge['queues'] == [], stream_purge
    assert "state=purged: queue 'stream_q' is a stream, which RabbitMQ cannot purge" in stream_purge['msg']
    assert ready(rabbit_env, 'classic_q') == 2


def test_reads_are_refused_without_the_management_api(rabbit_env, ansible):
    """The refusal does not depend on the management API: a read sets a global QoS on its channel,
    and RabbitMQ refuses a consumer with one on any queue but a classic queue, before delivering."""
    url = rabbit_env.url
    blind = 'http://127.0.0.1:9'  # nothing listens on the discard port
    declare(rabbit_env, 'qq', 'quorum', **{'x-delivery-limit': 2})
    declare(rabbit_env, 'sq', 'stream')
    quorum_ids = send(rabbit_env, 'qq', [ADD, MAIL, ADD, MAIL, ADD, ADD])
    send(rabbit_env, 'sq', [ADD, MAIL, ADD])
    classic = publish(url, ADD, 'plain', args=(1, 1), count=5)
    # A stream's count in queue.declare-ok trails its confirmed messages by a moment; while it says 0 there is
    # nothing to read (no read, no refusal), which is not what this test is about.
    deadline = time.monotonic() + 30
    while ready(rabbit_env, 'sq') != 3:
        assert time.monotonic() < deadline, 'the stream never reported its 3 messages'
        time.sleep(0.1)

    results = ansible.play([info(broker_url=url, queues=['qq'], breakdown=True, management_url=blind)] * 3 + [
        info(broker_url=url, queues=['qq'], peek=2, management_url=blind),
        change(broker_url=url, queues=['qq'], task_names=[MAIL], management_url=blind),
        change(broker_url=url, queues=['qq'], state='trimmed', keep=2, management_url=blind),
        change(broker_url=url, queues=['plain', 'qq'], state='trimmed', keep=2, management_url=blind),
        info(broker_url=url, queues=['sq'], peek=2, management_url=blind),
        info(broker_url=url, queues=['sq'], breakdown=True, management_url=blind),
        # Classic queues are read as before.
        info(broker_url=url, queues=['plain'], peek=2, breakdown=True, management_url=blind),
    ])
    for result in results[:3]:
        refused(result, 'qq', 'breakdown', kind=None)
        assert result['queues'][0]['type'] is None and 'management_error' in result
    refused(results[3], 'qq', 'peek', kind=None)
    refused(results[4], 'qq', 'task_names', kind=None)
    refused(results[5], 'qq', 'state=trimmed', kind=None)
    refused(results[6], 'qq', 'state=trimmed', kind=None)
    assert results[6]['queues'] == [] and 'pending' not in results[6]  # 'plain' was not trimmed
    refused(results[7], 'sq', 'peek', kind=None)
    refused(results[8], 'sq', 'breakdown', kind=None)
    plain = results[9]
    assert not plain.get('failed'), plain
    assert [m['id'] for m in plain['queues'][0]['peek']] == classic[:2]
    assert plain['queues'][0]['tasks'] == {ADD: 5}

    assert ready(rabbit_env, 'qq') == 6
    assert drain(rabbit_env, 'qq') == quorum_ids
    assert drain(rabbit_env, 'plain') == classic


def test_quorum_facts_leader_members_delivery_limit_and_dead_letter(rabbit_env, ansible):
    url = rabbit_env.url
    node = management('GET', '/api/overview')['node']
    # The queue's argument (5) and its policy's limit (3): RabbitMQ applies the lower; the queue's own dead-letter
    # exchange wins over the policy's. The second queue has only the policy's.
    own = {'x-delivery-limit': 5, 'x-dead-letter-exchange': 'dlx', 'x-dead-letter-routing-key': 'failed'}
    declare(rabbit_env, 'qq_args', 'quorum', **own)
    declare(rabbit_env, 'qq_policy', 'quorum')
    declare(rabbit_env, 'qq_bare', 'quorum')
    publish(url, ADD, 'classic_q', args=(1, 1), count=1)
    management('PUT', '/api/policies/%s/limits' % rabbit_env.qvhost,
               {'pattern': '^qq_(args|policy)$', 'apply-to': 'queues', 'priority': 1,
                'definition': {'delivery-limit': 3, 'dead-letter-exchange': 'policy-dlx'}})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:   # the policy reaches the queues a moment after it is set
        records = dict((q['name'], q) for q in management('GET', '/api/queues/%s' % rabbit_env.qvhost))
        if all((records.get(name) or {}).get('effective_policy_definition', {}).get('delivery-limit') == 3
               for name in ('qq_args', 'qq_policy')):
            break
        time.sleep(0.5)

    names = ['qq_args', 'qq_policy', 'qq_bare', 'classic_q']
    result = ansible.module('celery_queue_info', dict(broker_url=url, queues=names))
    assert not result.get('failed'), result
    queues = dict((q['name'], q) for q in result['queues'])
    for name in ('qq_args', 'qq_policy', 'qq_bare'):
        assert queues[name]['type'] == 'quorum' and queues[name]['leader'] == node, queues[name]
        assert queues[name]['members'] == [node] and queues[name]['online'] == [node], queues[name]
        assert queues[name]['priorities'] is None, queues[name]   # no priorities on a quorum queue, never a split
    assert queues['qq_args']['delivery_limit'] == 3
    assert queues['qq_args']['dead_letter'] == {'exchange': 'dlx', 'routing_key': 'failed', 'strategy': 'at-most-once'}
    assert queues['qq_policy']['delivery_limit'] == 3
    assert queues['qq_policy']['dead_letter'] == {'exchange': 'policy-dlx', 'routing_key': None,
                                                  'strategy': 'at-most-once'}
    assert queues['qq_bare']['delivery_limit'] is None and queues['qq_bare']['dead_letter'] is None
    assert 'leader' not in queues['classic_q'] and 'delivery_limit' not in queues['classic_q']


def test_management_url_lists_the_nodes_and_the_one_that_answers_is_used(rabbit_env, ansible):
    url = rabbit_env.url
    publish(url, ADD, 'classic_q', args=(1, 1), count=2)
    dead = 'http://127.0.0.1:9'
    live = 'http://127.0.0.1:15672'
    first_dead, comma_separated, all_dead = ansible.play([
        info(broker_url=url, queues=['classic_q'], management_url=[dead, live]),
        info(broker_url=url, queues=['classic_q'], management_url='%s,%s' % (dead, live)),
        info(broker_url=url, queues=['classic_q'], management_url=[dead, 'http://ops:s3cret-mgmt@127.0.0.1:10']),
    ])
    for result in (first_dead, comma_separated):
        assert not result.get('failed') and not result.get('management_error'), result
        assert result['queues'][0]['unacked'] == 0 and result['queues'][0]['type'] == 'classic', result
    # None answers: ready counts still come from AMQP, and the error says why for each URL, without the password.
    assert not all_dead.get('failed'), all_dead
    error = all_dead['management_error']
    assert 'at %s:' % dead in error and '127.0.0.1:10' in error, error
    assert 's3cret-mgmt' not in json.dumps(all_dead), all_dead
    assert all_dead['queues'][0]['messages'] == 2 and all_dead['queues'][0]['unacked'] is None
