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

from harness import AMQP_PORT, publish, unwrapped

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


# -- worker replies and events ----------------------------------------------------------------------

import base64  # noqa: E402
import threading  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402

from harness import RedisBroker  # noqa: E402


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic

# What a rogue sends back for every request it sees; each one is one undecodable reply.
JUNK_PER_REQUEST = 5


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def junk_replies(command):
    """(body, ticket) of the junk answers to one request: not an envelope at all (on Redis; on RabbitMQ the
    message is its envelope, and this is one more deep body), JSON nested 200000 deep, a ticket that is a list,
    a body that is a list, and a node's value of another shape than Celery's."""
    wrong = {'ping': 'pong', 'stats': 'stats!', 'active_queues': [{'name': ['q']}]}.get(command, ['?'])
    return [(DEEP.encode(), 'raw'), (DEEP.encode(), 'ticket'), (b'{"rogue@h": {"ok": "pong"}}', ['t']),
            (b'["rogue@h"]', 'ticket'), (json.dumps({'rogue@h': wrong}).encode(), 'ticket')]


class Rogue(object):
    """Something on the broker that answers every remote-control request with junk, as a worker would answer:
    on Redis it LPUSHes kombu envelopes into the reply list; on RabbitMQ it publishes to the reply exchange."""

    def __init__(self, env):
        self.env, self.seen, self.errors = env, 0, []
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), self.errors

    def _run(self):
        try:
            self._redis() if isinstance(self.env, RedisBroker) else self._amqp()
        except Exception as exc:
            self.errors.append(repr(exc))
            self.ready.set()

    def _answer(self, request, send):
        self.seen += 1
        if request.get('ticket'):
            for body, ticket in junk_replies(request['method']):
                send(request['reply_to']['routing_key'], request['ticket'] if ticket in ('ticket', 'raw') else ticket,
                     body, raw=ticket == 'raw')

    def _redis(self):
        client = redis.Redis.from_url(self.env.url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe('/%d.celery.pidbox*' % self.env.db)
        while pubsub.get_message(timeout=1) is None and not pubsub.subscribed:
            pass
        self.ready.set()

        def send(oid, ticket, body, raw):
            if raw:
                return client.lpush(oid + '.reply.celery.pidbox', body)
            envelope = {'body': base64.b64encode(body).decode(), 'content-encoding': 'utf-8',
                        'content-type': 'application/json', 'headers': {'ticket': ticket, 'clock': 1},
                        'properties': {'body_encoding': 'base64', 'delivery_tag': 'x', 'priority': 0}}
            client.lpush(oid + '.reply.celery.pidbox', json.dumps(envelope))
        while not self.stopping.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message['type'] == 'pmessage':
                envelope = json.loads(message['data'])
                self._answer(json.loads(base64.b64decode(envelope['body'])), send)
        pubsub.close()

    def _amqp(self):
        connection = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', AMQP_PORT, self.env.vhost,
                                                                       pika.PlainCredentials('guest', 'guest')))
        channel = connection.channel()
        channel.exchange_declare('celery.pidbox', 'fanout', durable=False)
        queue = channel.queue_declare('', exclusive=True).method.queue
        channel.queue_bind(queue, 'celery.pidbox')

        def send(oid, ticket, body, raw):
            channel.basic_publish('reply.celery.pidbox', oid, body, pika.BasicProperties(
                content_type='application/json', headers={'ticket': ticket, 'clock': 1}))
        channel.basic_consume(queue, lambda _ch, _m, _p, body: self._answer(json.loads(body), send), auto_ack=True)
        self.ready.set()
        while not self.stopping.is_set():
            connection.process_data_events(time_limit=0.2)
        connection.close()

    def stop(self):
        self.stopping.set()
        self.thread.join(30)
        assert not self.errors, self.errors


def test_a_rogue_worker_answering_junk_is_counted_and_the_real_one_still_answers(broker, ansible, workers):
    workers.start(broker.url, 'real@fleet', ['q1'])
    rogue = Rogue(broker)
    try:
        # No expected nodes: the module collects for the whole timeout, so every junk reply is in.
        result = ok(ansible.module('celery_worker_info', dict(broker_url=broker.url, timeout=4)))
        inventory = inventory_of(ansible, broker)
    finally:
        rogue.stop()
    assert rogue.seen >= 3
    assert result['online'] == ['real@fleet'] and set(result['workers']) == {'real@fleet'}
    assert result['workers']['real@fleet']['queues'] == ['q1']
    assert result['undecodable'] == 3 * JUNK_PER_REQUEST   # ping, stats, active_queues
    assert inventory['celery_workers']['hosts'] == ['fleet']
    assert unwrapped('skipped %d replies that could not be read' % (3 * JUNK_PER_REQUEST)) in unwrapped(ansible.last['stderr'])


def inventory_of(ansible, broker):
    """ansible-inventory --list with the celery_workers plugin (run as test_inventory.py runs it)."""
    import os
    import subprocess
    import sys
    path = os.path.join(ansible.tmpdir, 'fleet.celery_workers.yml')
    with open(path, 'w') as handle:
        json.dump(dict(plugin='celeryops.fleet.celery_workers', broker_url=broker.url, timeout=4), handle)
    proc = subprocess.run(['ansible-inventory', '-i', path, '--list'], capture_output=True, text=True, timeout=120,
                          check=False, env=dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable))
    ansible.last = dict(stdout=proc.stdout, stderr=proc.stderr, rc=proc.returncode)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def junk_events():
    """Bodies that are not events a summary can read: not JSON, nested 200000 deep, a hostname and a uuid
    that are lists, a timestamp that is text (failures are sorted by it) and a batch holding one of them."""
    return [DEEP.encode(), json.dumps({'type': 'worker-heartbeat', 'hostname': ['x'], 'freq': 2}).encode(),
            json.dumps({'type': 'task-received', 'uuid': ['a'], 'name': 'proj.t', 'hostname': 'rogue@h'}).encode(),
            json.dumps([{'type': 'task-failed', 'uuid': 'b', 'timestamp': 'yesterday', 'hostname': 'rogue@h'}]).encode()]


def publish_junk_events(env, stop):
    """Publish junk on the event exchange until ``stop`` is set, as a worker publishes its events; returns
    how many rounds went out."""
    rounds = 0
    if isinstance(env, RedisBroker):
        client = redis.Redis.from_url(env.url)
        channel = '/%d.celeryev/worker.heartbeat' % env.db
        while not stop.is_set():
            client.publish(channel, DEEP)   # not even an envelope
            for body in junk_events():
                client.publish(channel, json.dumps({
                    'body': base64.b64encode(body).decode(), 'content-encoding': 'utf-8',
                    'content-type': 'application/json', 'headers': {}, 'properties': {'body_encoding': 'base64'}}))
            rounds += 1
            stop.wait(0.3)
        return rounds
    connection = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', AMQP_PORT, env.vhost,
                                                                   pika.PlainCredentials('guest', 'guest')))
    channel = connection.channel()
    while not stop.is_set():
        for body in junk_events():
            channel.basic_publish('celeryev', 'worker.heartbeat', body,
                                  pika.BasicProperties(content_type='application/json'))
        rounds += 1
        connection.process_data_events(time_limit=0.3)
    connection.close()
    return rounds


def test_junk_on_the_event_exchange_is_counted_and_real_events_still_read(broker, ansible, workers):
    workers.start(broker.url, 'ev@fleet', ['q1'], events=True, heartbeat_interval=1)
    publish(broker.url, ADD, 'q1', args=(1, 2), count=2)
    stop = threading.Event()
    rounds = []
    thread = threading.Thread(target=lambda: rounds.append(publish_junk_events(broker, stop)), daemon=True)
    thread.start()
    try:
        result = ok(ansible.module('celery_events_info', dict(broker_url=broker.url, duration=4)))
    finally:
        stop.set()
        thread.join(30)
    assert rounds and rounds[0] > 0
    # Its heartbeats were read among the junk (whether it still counts as online at the window's end, two heartbeat
    # intervals of 1 s, depends on how loaded the machine is, not on the junk).
    real = result['workers'].get('ev@fleet')
    assert real and isinstance(real['last_heartbeat'], float) and real['freq'] == 1.0, result['workers']
    assert real['offline_reason'] != 'worker-offline', real
    assert 'rogue@h' not in result['workers'] and result['failures_total'] == 0
    assert result['undecodable'] >= 4, result['undecodable']
