"""celery_broker_info on real brokers and real Celery workers, through ansible-playbook.

Each kind of finding is produced the way production produces it: a `celery inspect` killed before the
replies came (orphan_reply), a queue no worker consumes (no_consumer), a worker SIGKILLed while holding an ETA
task, its unacked_index entry then aged past the visibility timeout (overdue_unacked), countdowns beyond the
visibility timeout (eta_beyond_visibility), a producer that republishes a task id (duplicate_task_id), a worker
storing results with result_expires=0 (result_without_ttl), and maxmemory settings on a private Redis.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis

from harness import APP_DIR, free_port, held_by_a_worker_gone, publish, wait_for

pytestmark = pytest.mark.module_logic


def info(ansible, **args):
    return ansible.module('celery_broker_info', args)


def of_kind(result, kind):
    return [f for f in result['findings'] if f['kind'] == kind]


def no_touch(client):
    try:
        client.execute_command('CLIENT', 'NO-TOUCH', 'OFF')
        return True
    except redis.ResponseError:
        return False


def kill_inspect_before_replies(url, client, worker):
    """A `celery inspect ping` killed while the only worker is stopped, the worker then resumed: the worker's
    reply lands in the dead client's reply list, which nothing will ever read. Returns the reply queue's name."""
    os.kill(worker.process.pid, signal.SIGSTOP)
    try:
        env = dict(os.environ, CELERY_BROKER_URL=url, PYTHONPATH=APP_DIR)
        inspect = subprocess.Popen([sys.executable, '-m', 'celery', '-A', 'fleet_tasks', 'inspect', 'ping', '-t', '60'],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            member = wait_for(lambda: client.smembers('_kombu.binding.reply.celery.pidbox'),
                              what='the inspect client to bind its reply queue')
            time.sleep(1.5)   # the request is published right after the binding
        finally:
            os.killpg(inspect.pid, signal.SIGKILL)
            inspect.wait(10)
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
    queue = list(member)[0].decode().split('\x06\x16')[-1]
    wait_for(lambda: client.exists(queue), what='the late reply in %s' % queue)
    return queue


def test_orphan_reply_from_a_killed_inspect(redis_env, ansible, workers):
    url, client = redis_env.url, redis_env.client
    worker = workers.start(url, 'late@hygiene', ['hq'])
    queue = kill_inspect_before_replies(url, client, worker)
    # Fresh and still bound: a live client could be about to read it.
    result = info(ansible, broker_url=url, orphan_after=3600, expected_nodes=['late@hygiene'], timeout=10)
    assert not result.get('failed'), result
    assert of_kind(result, 'orphan_reply') == [], result
    before = client.llen(queue)
    time.sleep(3)
    result = info(ansible, broker_url=url, orphan_after=2, expected_nodes=['late@hygiene'], timeout=10)
    assert not result.get('failed'), result
    [found] = of_kind(result, 'orphan_reply')
    assert found['name'] == queue and before == 1, result
    # Reading the length would reset the idle time the finding rests on, unless CLIENT NO-TOUCH (Redis 7.2+).
    assert found['count'] == (1 if no_touch(client) else None), found
    assert found['bytes'] > 0 and found['oldest_seconds'] >= 2, found
    assert 'still bound' in found['detail']
    assert result['summary']['orphan_reply'] == 1 and result['changed'] is False
    # The module left the list untouched: it is still as idle as it was, and found again by the next run.
    assert client.object('idletime', queue) >= 2
    result = info(ansible, broker_url=url, orphan_after=2, expected_nodes=['late@hygiene'], timeout=10)
    assert [f['name'] for f in of_kind(result, 'orphan_reply')] == [queue], result
    assert client.llen(queue) == before
    assert [k for k in client.scan_iter(match='*.reply.celery.pidbox*')
            if k.decode() != queue and not k.startswith(b'_kombu.')] == []
    # Unbound (its client closed): orphaned at any age.
    client.srem('_kombu.binding.reply.celery.pidbox', *client.smembers('_kombu.binding.reply.celery.pidbox'))
    result = info(ansible, broker_url=url, orphan_after=3600, expected_nodes=['late@hygiene'], timeout=10)
    [found] = of_kind(result, 'orphan_reply')
    assert found['name'] == queue and 'unbound' in found['detail'] and found['count'] == 1, result


@pytest.mark.mitogen
def test_no_consumer_from_one_broadcast(redis_env, ansible, workers):
    url = redis_env.url
    workers.start(url, 'served@hygiene', ['served'])
    publish(url, 'fleet_tasks.add', 'forgotten', args=(1, 2), count=3)
    publish(url, 'fleet_tasks.add', 'served', args=(1, 2))
    result = info(ansible, broker_url=url, expected_nodes=['served@hygiene'], timeout=10)
    assert not result.get('failed'), result
    assert [(f['name'], f['count']) for f in of_kind(result, 'no_consumer')] == [('forgotten', 3)], result
    assert result['nodes'] == ['served@hygiene'] and result['missing'] == []
    assert result['summary']['no_consumer'] == 1
    # A threshold fails, naming the option; with wait it holds once a worker consumes the queue.
    result = info(ansible, broker_url=url, expected_nodes=['served@hygiene'], timeout=10, max_findings={'no_consumer': 0})
    assert result.get('failed') and result['option'] == 'max_findings', result
    assert 'no_consumer: 1 (max 0)' in result['msg'] and result['summary']['no_consumer'] == 1
    workers.start(url, 'late@hygiene', ['forgotten'], ready=False)
    result = info(ansible, broker_url=url, timeout=3, max_findings={'no_consumer': 0}, wait=True, wait_timeout=120,
                  wait_sleep=1)
    assert not result.get('failed'), result
    assert result['summary']['no_consumer'] == 0 and result['waited'] > 0, result


def test_overdue_unacked_and_eta_beyond_visibility(redis_env, ansible, workers):
    url, client = redis_env.url, redis_env.client
    # A live worker holding an ETA task: beyond a 1 s visibility timeout, but its holder answers.
    workers.start(url, 'holder@hygiene', ['live'])
    live = publish(url, 'fleet_tasks.add', 'live', args=(1, 1), countdown=600)
    wait_for(lambda: client.hlen('unacked') == 1, what='the live worker to hold its ETA task')
    time.sleep(2)
    result = info(ansible, broker_url=url, visibility_timeout=1, expected_nodes=['holder@hygiene'], timeout=10)
    assert not result.get('failed'), result
    assert of_kind(result, 'overdue_unacked') == [], result
    [eta] = of_kind(result, 'eta_beyond_visibility')
    assert (eta['name'], eta['count']) == ('live', 1) and live[0] in eta['detail'], result


def test_overdue_unacked_of_a_killed_worker(redis_env, ansible, workers):
    url, client = redis_env.url, redis_env.client
    ids = held_by_a_worker_gone(workers, redis_env, 'held', 'gone@hygiene')
    [tag] = client.hkeys('unacked')
    result = info(ansible, broker_url=url, timeout=1)
    assert not result.get('failed'), result
    assert of_kind(result, 'overdue_unacked') == [], result   # held 600 s at most: within the visibility timeout
    client.zadd('unacked_index', {tag: time.time() - 4000}, xx=True)
    result = info(ansible, broker_url=url, timeout=1)
    [found] = of_kind(result, 'overdue_unacked')
    assert (found['name'], found['count']) == ('held', 1), result
    assert 4000 <= found['oldest_seconds'] < 4100 and ids[0] in found['detail'], found
    assert found['bytes'] == client.hstrlen('unacked', tag)
    # A longer visibility timeout: not overdue yet.
    result = info(ansible, broker_url=url, timeout=1, visibility_timeout=7200)
    assert of_kind(result, 'overdue_unacked') == [], result
    # Nothing was changed: the entry is still held, with its aged score.
    assert client.hkeys('unacked') == [tag] and client.zscore('unacked_index', tag) < time.time() - 3999


def test_eta_beyond_visibility_in_ready_messages(redis_env, ansible):
    url = redis_env.url
    far = publish(url, 'fleet_tasks.add', 'later', args=(1, 1), countdown=7200, count=2)
    publish(url, 'fleet_tasks.add', 'later', args=(1, 1), countdown=60)
    publish(url, 'fleet_tasks.add', 'soon', args=(1, 1), countdown=60)
    result = info(ansible, broker_url=url, timeout=0.3)
    assert not result.get('failed'), result
    [found] = of_kind(result, 'eta_beyond_visibility')
    assert (found['name'], found['count']) == ('later', 2) and far[0] in found['detail'], result
    result = info(ansible, broker_url=url, timeout=0.3, visibility_timeout=10000)
    assert of_kind(result, 'eta_beyond_visibility') == [], result
    result = info(ansible, broker_url=url, timeout=0.3, visibility_timeout=30)
    assert sorted((f['name'], f['count']) for f in of_kind(result, 'eta_beyond_visibility')) == \
        [('later', 3), ('soon', 1)], result


def test_duplicate_task_id_across_ready_and_unacked(redis_env, ansible, workers):
    url = redis_env.url
    held = held_by_a_worker_gone(workers, redis_env, 'held', 'gone@hygiene')
    # The producer "retries" a publish it thought lost, with the same task id.
    publish(url, 'fleet_tasks.add', 'held', args=(1, 1), task_id=held[0])
    twice = str(uuid.uuid4())
    publish(url, 'fleet_tasks.add', 'other', args=(1, 1), task_id=twice)
    publish(url, 'fleet_tasks.add', 'other', args=(1, 1), task_id=twice)
    publish(url, 'fleet_tasks.add', 'other', args=(1, 1))
    result = info(ansible, broker_url=url, timeout=0.3)
    assert not result.get('failed'), result
    found = dict((f['name'], f) for f in of_kind(result, 'duplicate_task_id'))
    assert sorted(found) == sorted([held[0], twice]), result
    assert found[held[0]]['count'] == 2 and 'unacked (held)' in found[held[0]]['detail'] \
        and 'ready (held)' in found[held[0]]['detail']
    assert found[twice]['count'] == 2 and found[twice]['detail'] == 'seen in ready (other), ready (other)'
    # A sample of one message per queue no longer sees the twice-published id twice.
    result = info(ansible, broker_url=url, timeout=0.3, message_sample=1)
    assert [f['name'] for f in of_kind(result, 'duplicate_task_id')] == [held[0]], result
    assert result['sampled'] == {'other': 1}, result


def test_result_without_ttl(redis_env, ansible, workers):
    url = redis_env.url
    workers.start(url, 'results@hygiene', ['rq'], config=['result_backend=%s' % url, 'result_expires=0'])
    ids = publish(url, 'fleet_tasks.add', 'rq', args=(2, 2), count=3)
    wait_for(lambda: all(redis_env.client.exists('celery-task-meta-' + i) for i in ids), what='the stored results')
    assert redis_env.client.ttl('celery-task-meta-' + ids[0]) == -1
    result = info(ansible, broker_url=url, timeout=0.3)
    assert of_kind(result, 'result_without_ttl') == [] and 'results_sampled' not in result, result
    result = info(ansible, broker_url=url, timeout=0.3, result_backend=url)
    assert not result.get('failed'), result
    [found] = of_kind(result, 'result_without_ttl')
    assert found['count'] == 3 and found['bytes'] > 0 and 'every key scanned' in found['detail'], found
    assert result['results_sampled'] == 3
    result = info(ansible, broker_url=url, timeout=0.3, result_backend_broker=True, result_sample=1)
    [found] = of_kind(result, 'result_without_ttl')
    assert found['count'] == 1 and 'a sample' in found['detail'] and result['results_sampled'] == 1, result
    # A result with an expiry is not one.
    for i in ids:
        redis_env.client.expire('celery-task-meta-' + i, 600)
    result = info(ansible, broker_url=url, timeout=0.3, result_backend=url)
    assert of_kind(result, 'result_without_ttl') == [] and result['results_sampled'] == 3, result


def test_settings_that_lose_messages_on_a_private_redis(private, ansible):
    server = private.redis()
    client = server.client()
    url = server.url
    result = info(ansible, broker_url=url, timeout=0.3)
    assert not result.get('failed'), result
    assert [f['kind'] for f in result['findings']] == ['persistence_off'], result
    client.config_set('maxmemory-policy', 'allkeys-lru')
    used = client.info('memory')['used_memory']
    client.config_set('maxmemory', used + 64 * 1024)
    client.config_set('appendonly', 'yes')
    result = info(ansible, broker_url=url, timeout=0.3, max_findings={'eviction_policy': 0})
    assert result.get('failed') and result['option'] == 'max_findings', result
    assert sorted(f['kind'] for f in result['findings']) == ['eviction_policy', 'memory_near_limit'], result
    assert 'allkeys-lru' in of_kind(result, 'eviction_policy')[0]['detail']
    client.config_set('maxmemory-policy', 'noeviction')
    client.config_set('maxmemory', 0)
    result = info(ansible, broker_url=url, timeout=0.3, max_findings={'eviction_policy': 0})
    assert not result.get('failed') and result['findings'] == [], result


def test_check_mode_changes_nothing_and_junk_is_skipped(redis_env, ansible, workers):
    url, client = redis_env.url, redis_env.client
    workers.start(url, 'calm@hygiene', ['calm'])
    publish(url, 'fleet_tasks.add', 'junky', args=(1, 1))
    client.lpush('junky', b'\xff\xfe not json', b'{"headers": 5}', b'[1, 2')
    client.hset('unacked', 'junk-tag', b'not json at all')
    client.zadd('unacked_index', {'junk-tag': time.time() - 9999})
    client.hset('evil.reply.celery.pidbox', 'a', 'b')   # a reply queue name, but not a list
    client.lpush('x.reply.celery.pidboxes', 'not a reply list name')
    before = redis_env.snapshot(exclude=(b'_kombu.binding_deadlines',))
    result = ansible.module('celery_broker_info', dict(broker_url=url, orphan_after=1, expected_nodes=['calm@hygiene'],
                                                       timeout=10), check=True)
    assert not result.get('failed'), result
    assert result['changed'] is False
    assert [(f['name'], f['count']) for f in of_kind(result, 'no_consumer')] == [('junky', 4)], result
    assert of_kind(result, 'orphan_reply') == [] and of_kind(result, 'overdue_unacked') == [], result
    assert redis_env.snapshot(exclude=(b'_kombu.binding_deadlines',)) == before


@pytest.mark.parametrize('args, option, text', [
    (dict(max_findings={'nonsense': 0}), 'max_findings', "unknown kind 'nonsense'"),
    (dict(max_findings={'no_consumer': -1}), 'max_findings', 'must be 0 or more'),
    (dict(max_findings={'no_consumer': 'many'}), 'max_findings', 'must be a number of findings'),
    (dict(visibility_timeout=0), 'visibility_timeout', 'must be a positive number of seconds'),
    (dict(orphan_after='nan'), 'orphan_after', 'must be a positive number of seconds'),
    (dict(result_sample=0), 'result_sample', 'must be 1 or more'),
    (dict(memory_ratio=1.5), 'memory_ratio', 'at most 1'),
    (dict(expected_nodes=['nohost']), 'expected_nodes', 'is not a node name'),
    (dict(result_backend='amqp://127.0.0.1//'), 'result_backend', 'must be a redis:// or rediss:// URL'),
])
def test_bad_input_names_the_option(redis_env, ansible, args, option, text):
    result = info(ansible, broker_url=redis_env.url, timeout=0.3, **args)
    assert result.get('failed') and result['option'] == option and text in result['msg'], result
    assert 'Traceback' not in result['msg']


# -- RabbitMQ ---------------------------------------------------------------------------------------

EVENT_RECEIVER = '''
import sys
from fleet_tasks import make_app
app = make_app(sys.argv[1])
# As Celery before 4 declared event queues (and as event_queue_durable does now): durable, no expiry, no TTL.
app.conf.update(event_queue_durable=True, event_queue_exclusive=False, event_queue_expires=None, event_queue_ttl=None)
with app.connection() as connection:
    app.events.Receiver(connection, handlers={'*': lambda event: None}).capture(limit=None, timeout=None, wakeup=False)
'''


def queues_of(rabbit):
    from harness import management
    return management('GET', '/api/queues/%s?columns=name,consumers,messages,durable' % rabbit.qvhost) or []


def test_rabbitmq_stale_event_queue_of_a_killed_monitor(rabbit_env, ansible, workers):
    url = rabbit_env.url
    monitor = subprocess.Popen([sys.executable, '-c', EVENT_RECEIVER, url], env=dict(os.environ, PYTHONPATH=APP_DIR),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        name = wait_for(lambda: [q['name'] for q in queues_of(rabbit_env)
                                 if q['name'].startswith('celeryev.') and q.get('consumers')], what='the monitor')[0]
    finally:
        os.killpg(monitor.pid, signal.SIGKILL)
        monitor.wait(10)
    workers.start(url, 'events@hygiene', ['eq'], events=True)
    rabbit_env.wait_for(name, lambda q: q.get('consumers') == 0 and (q.get('messages') or 0) > 0)
    result = info(ansible, broker_url=url)
    assert not result.get('failed'), result
    [found] = of_kind(result, 'stale_event_queue')
    assert found['name'] == name and found['count'] > 0, result
    assert result['summary']['stale_event_queue'] == 1 and 'stale_event_queue' in result['checked']
    assert result['changed'] is False
    # A monitor that consumes is not stale; the workers' own event-less pidbox queues are not findings.
    assert [f['kind'] for f in result['findings'] if f['name'] != name and f['kind'] != 'no_consumer'] == [], result
    result = info(ansible, broker_url=url, max_findings={'stale_event_queue': 0})
    assert result.get('failed') and result['option'] == 'max_findings', result


def test_rabbitmq_orphan_reply_no_consumer_and_non_durable(rabbit_env, ansible, workers):
    import pika
    from kombu import Connection, Exchange, Queue
    url = rabbit_env.url
    workers.start(url, 'served@hygiene', ['served'])
    publish(url, 'fleet_tasks.add', 'forgotten', args=(1, 2), count=3)
    publish(url, 'fleet_tasks.add', 'served', args=(1, 2))
    # A queue an app declares with Queue(durable=False) (here through kombu, as Celery would).
    with Connection(url) as connection:
        Queue('volatile', Exchange('volatile'), 'volatile', durable=False)(connection.default_channel).declare()
    # A remote-control client that died after declaring its reply queue, before consuming it (the reply came anyway):
    # no consumer ever came, so auto-delete never fires (as for clients without control_queue_expires).
    reply = '%s.reply.celery.pidbox' % uuid.uuid4()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(reply, auto_delete=True)
    channel.basic_publish('', reply, b'{"ping": "pong"}')
    connection.close()
    rabbit_env.wait_for('forgotten', lambda q: q.get('messages_ready') == 3)
    rabbit_env.wait_for(reply, lambda q: q.get('messages') == 1)
    result = info(ansible, broker_url=url)
    assert not result.get('failed'), result
    kinds = [(f['kind'], f['name'], f['count']) for f in result['findings']]
    assert ('orphan_reply', reply, 1) in kinds, kinds
    assert ('no_consumer', 'forgotten', 3) in kinds and not [k for k in kinds if k[1] == 'served'], kinds
    assert [k for k in kinds if k[0] == 'non_durable_queue'] == [('non_durable_queue', 'volatile', 0)], kinds
    assert set(result['summary']) == {'orphan_reply', 'stale_event_queue', 'no_consumer', 'eta_beyond_visibility',
                                      'memory_alarm', 'disk_alarm', 'non_durable_queue'}
    # No alarm on the shared broker.
    assert result['summary']['memory_alarm'] == result['summary']['disk_alarm'] == 0
    # A management API that cannot be reached fails naming it.
    result = info(ansible, broker_url=url, management_url='http://127.0.0.1:%d' % free_port())
    assert result.get('failed') and result['option'] == 'management_url', result


def test_rabbitmq_eta_beyond_the_consumer_timeout(rabbit_env, ansible, workers):
    url = rabbit_env.url
    workers.start(url, 'holder@hygiene', ['later'])
    far = publish(url, 'fleet_tasks.add', 'later', args=(1, 1), countdown=600)
    near = publish(url, 'fleet_tasks.add', 'later', args=(1, 1), countdown=30)
    rabbit_env.wait_for('later', lambda q: q.get('messages_unacknowledged') == 2)
    # RabbitMQ's default consumer_timeout (30 minutes) outlasts both countdowns.
    result = info(ansible, broker_url=url, expected_nodes=['holder@hygiene'], timeout=10)
    assert not result.get('failed'), result
    assert of_kind(result, 'eta_beyond_visibility') == [] and result['nodes'] == ['holder@hygiene'], result
    # A broker whose consumer_timeout is five minutes closes the worker's channel before the ETA of one of them.
    result = info(ansible, broker_url=url, expected_nodes=['holder@hygiene'], timeout=10, consumer_timeout=300)
    [found] = of_kind(result, 'eta_beyond_visibility')
    assert (found['name'], found['count']) == ('later', 1) and far[0] in found['detail'] and near[0] not in found['detail']
    assert result['changed'] is False


def test_result_backend_password_never_shows(redis_env, ansible):
    secret = 'pw-' + uuid.uuid4().hex
    result = info(ansible, broker_url=redis_env.url, timeout=0.3, connect_timeout=2,
                  result_backend='redis://:%s@127.0.0.1:%d/0' % (secret, free_port()))
    assert result.get('failed') and result['option'] == 'result_backend', result
    assert 'cannot connect' in result['msg'] and secret not in ansible.last['stdout'] + ansible.last['stderr'], result


def test_global_keyprefix_with_glob_characters(redis_env, ansible, workers):
    """kombu's global_keyprefix prefixes every key; one holding glob characters must neither widen nor empty a scan."""
    url, client, prefix = redis_env.url, redis_env.client, 'app[1]*?:'
    worker = workers.start(url, 'prefixed@hygiene', ['held'], global_keyprefix=prefix)
    ids = publish(url, 'fleet_tasks.add', 'held', args=(1, 1), countdown=600, global_keyprefix=prefix)
    wait_for(lambda: client.hlen(prefix + 'unacked') == 1, what='the ETA task to be held under the prefix')
    worker.kill()
    publish(url, 'fleet_tasks.add', 'waiting', args=(1, 1), global_keyprefix=prefix)
    publish(url, 'fleet_tasks.add', 'unprefixed', args=(1, 1))   # another app's, without the prefix
    [tag] = client.hkeys(prefix + 'unacked')
    client.zadd(prefix + 'unacked_index', {tag: time.time() - 4000}, xx=True)
    client.lpush(prefix + 'dead.reply.celery.pidbox', b'{}')     # a reply list nobody bound
    client.lpush('other.reply.celery.pidbox', b'{}')             # not this app's
    result = info(ansible, broker_url=url, global_keyprefix=prefix, timeout=0.3)
    assert not result.get('failed'), result
    kinds = sorted((f['kind'], f['name'], f['count']) for f in result['findings'] if f['kind'] != 'persistence_off')
    assert kinds == [('no_consumer', 'waiting', 1),
                     ('orphan_reply', 'dead.reply.celery.pidbox', 1), ('overdue_unacked', 'held', 1)], result
    assert ids[0] in of_kind(result, 'overdue_unacked')[0]['detail']
