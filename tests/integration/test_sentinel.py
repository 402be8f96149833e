"""Highly available brokers (issue 18): Redis Sentinel and Celery failover lists, on real local processes.

One PrivateSentinelSet (a master, a replica, three Sentinels, all with passwords) serves the whole module, to keep
CI time small; the test that kills the master runs last. Workers are real Celery workers connected through
Sentinel (broker_transport_options master_name and sentinel_kwargs, as an operator configures them).
"""

import json
import os
import signal
import socket
import subprocess
import threading
import uuid

import pytest

from harness import free_port, make_app, unwrapped, wait_for

pytestmark = pytest.mark.module_logic

# Distinct passwords per URL: each must be masked on its own, wherever it would show.
PASSWORDS = ['first-pw-%s' % uuid.uuid4().hex[:10], 'second-pw-%s' % uuid.uuid4().hex[:10]]


@pytest.fixture(scope='module')
def sentinels(tmp_path_factory):
    import private_brokers
    found = private_brokers.PrivateSentinelSet(str(tmp_path_factory.mktemp('sentinel')))
    try:
        yield found.start()
    finally:
        found.cleanup()


def sentinel_args(sentinels, **extra):
    args = dict(broker_url=sentinels.url(), master_name=sentinels.master_name,
                sentinel_password=sentinels.sentinel_password, connect_timeout=2)
    args.update(extra)
    return args


def worker_config(sentinels):
    """What a worker takes on the command line to reach the broker through Sentinel."""
    options = dict(master_name=sentinels.master_name, sentinel_kwargs=dict(password=sentinels.sentinel_password))
    return ['broker_transport_options=(json)%s' % json.dumps(options)]


def sentinel_app(sentinels):
    app = make_app(sentinels.url())
    app.conf.broker_transport_options = dict(master_name=sentinels.master_name,
                                             sentinel_kwargs=dict(password=sentinels.sentinel_password))
    return app


def publish(app, queue, count):
    with app.producer_or_acquire() as producer:
        return [app.send_task('fleet_tasks.add', args=(1, 1), queue=queue, producer=producer).id
                for _index in range(count)]


def assert_clean(ansible, *secrets):
    output = ansible.last['stdout'] + ansible.last['stderr']
    for secret in secrets:
        assert secret not in output, 'a password shows in the output'


def test_queue_info_through_sentinel_names_the_master(sentinels, ansible):
    app = sentinel_app(sentinels)
    try:
        publish(app, 'through_sentinel', 3)
    finally:
        app.close()
    result = ansible.module('celery_queue_info', sentinel_args(sentinels, queues=['through_sentinel']), verbosity=3)
    assert not result.get('failed'), result
    assert result['queues'][0]['messages'] == 3
    broker = result['broker']
    assert broker['port'] == sentinels.master_port()
    assert broker['sentinel']['master_name'] == sentinels.master_name
    assert broker['sentinel']['answered'] in broker['sentinel']['sentinels']
    assert len(broker['sentinel']['sentinels']) == 3
    assert_clean(ansible, sentinels.password, sentinels.sentinel_password)


def test_task_info_reads_the_result_backend_of_a_broker_behind_sentinel(sentinels, ansible):
    """result_backend_broker: true with a sentinel:// broker reads the results from the master the Sentinels name
    (the broker's master_name and sentinel_password); a sentinel:// result_backend of its own is refused by name."""
    task_id = str(uuid.uuid4())
    client = sentinels.master_client()
    client.set('celery-task-meta-' + task_id, json.dumps({'status': 'SUCCESS', 'result': 3, 'task_id': task_id,
                                                          'date_done': '2026-12-07T23:00:00'}))
    try:
        found, refused = ansible.play([
            {'celeryops.fleet.celery_task_info': sentinel_args(sentinels, ids=[task_id], result_backend_broker=True,
                                                               timeout=0.5)},
            {'celeryops.fleet.celery_task_info': sentinel_args(sentinels, ids=[task_id], result_backend=sentinels.url(),
                                                               timeout=0.5)},
        ])
    finally:
        client.delete('celery-task-meta-' + task_id)
    assert not found.get('failed'), found.get('msg')
    assert found['result_states'][task_id]['state'] == 'SUCCESS', found['result_states']
    assert refused.get('failed') and refused['option'] == 'result_backend', refused
    assert 'the result backend must be a redis:// or rediss:// URL' in refused['msg'], refused['msg']
    assert_clean(ansible, sentinels.password, sentinels.sentinel_password)


def test_lookup_and_worker_info_through_sentinel(sentinels, ansible, workers):
    worker = workers.start(sentinels.url(), 'sentinel@fleet', ['sq_workers'], config=worker_config(sentinels))
    lookup = ("{{ lookup('celeryops.fleet.queue_depth', 'sq_workers', broker_url=url, master_name='%s', "
              "sentinel_password=spw) }}" % sentinels.master_name)
    results = ansible.play([
        {'celeryops.fleet.celery_worker_info': sentinel_args(sentinels, expected_nodes=['sentinel@fleet'], timeout=3)},
        {'ansible.builtin.debug': {'msg': lookup}},
    ], verbosity=3, play_extra={'vars': {'url': sentinels.url(), 'spw': sentinels.sentinel_password}})
    info, depth = results
    assert not info.get('failed'), info
    assert info['online'] == ['sentinel@fleet'], (info, worker.log()[-2000:])
    assert info['missing'] == []
    assert info['broker']['port'] == sentinels.master_port()
    assert not depth.get('failed'), depth.get('msg')
    assert str(depth['msg']) == '0'
    assert_clean(ansible, sentinels.password, sentinels.sentinel_password)


def test_inventory_through_sentinel(sentinels, workers, tmp_path):
    workers.start(sentinels.url(), 'inventory@fleet', ['sq_inventory'], config=worker_config(sentinels))
    config = tmp_path / 'fleet.celery_workers.yml'
    config.write_text('plugin: celeryops.fleet.celery_workers\nmaster_name: %s\nsentinel_password: %s\nexpected_count: 1\n'
                      'timeout: 3\n' % (sentinels.master_name, sentinels.sentinel_password))
    # The URL (with the master's password) from the environment, as the modules take it.
    env = dict(os.environ, CELERY_BROKER_URL=sentinels.url(), ANSIBLE_INVENTORY_ENABLED='celeryops.fleet.celery_workers')
    out = subprocess.run(['ansible-inventory', '-i', str(config), '--list', '-vvv'], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'inventory@fleet' in out.stdout
    assert sentinels.password not in out.stdout + out.stderr and sentinels.sentinel_password not in out.stdout + out.stderr


def test_bad_sentinel_options_fail_naming_the_option(sentinels, ansible):
    results = ansible.play([
        {'celeryops.fleet.celery_queue_info': sentinel_args(sentinels, queues=['q'], master_name='no-such-master')},
        {'celeryops.fleet.celery_queue_info': sentinel_args(sentinels, queues=['q'], sentinel_password='wrong-pw')},
        {'celeryops.fleet.celery_queue_info': sentinel_args(sentinels, queues=['q'], master_name=None)},
        {'celeryops.fleet.celery_queue_info': dict(broker_url='redis://127.0.0.1:6379/0', queues=['q'], master_name='m')},
    ], verbosity=3)
    assert [r.get('option') for r in results] == ['master_name', 'sentinel_password', 'master_name', 'master_name']
    assert all(r.get('failed') and 'Traceback' not in r['msg'] for r in results), results
    assert "no-such-master" in results[0]['msg']
    assert_clean(ansible, sentinels.password, sentinels.sentinel_password, 'wrong-pw')


def test_tls_to_the_master_named_by_sentinel(tmp_path, ansible):
    """A TLS-only master behind a Sentinel (plaintext itself, as kombu reaches it): the TLS options apply to the
    master; a CA that did not sign its certificate fails naming tls_ca_file."""
    import private_brokers
    tls = private_brokers.make_tls(str(tmp_path / 'tls'))
    found = private_brokers.PrivateSentinelSet(str(tmp_path / 'tls-sentinel'), tls=tls, replicas=0, sentinels=1)
    try:
        found.start()
        found.master_client().lpush('tls_queue', b'not a message, counted all the same')
        args = sentinel_args(found, queues=['tls_queue'])
        results = ansible.play([
            {'celeryops.fleet.celery_queue_info': dict(args, tls_ca_file=tls['ca'])},
            {'celeryops.fleet.celery_queue_info': dict(args, tls_ca_file=tls['wrong_ca'])},
        ], verbosity=3)
    finally:
        found.cleanup()
    verified, wrong = results
    assert not verified.get('failed'), verified
    assert verified['broker']['tls'] is True and verified['broker']['port'] == found.first_master
    assert verified['queues'][0]['messages'] == 1
    assert wrong.get('failed') and wrong['option'] == 'tls_ca_file', wrong
    assert 'certificate verification failed' in wrong['msg']
    assert_clean(ansible, found.password, found.sentinel_password)


# -- replication of removals (WAIT) ---------------------------------------------------------------

def wait_calls(client):
    """How many WAIT commands the server has run (INFO commandstats)."""
    return client.info('commandstats').get('cmdstat_wait', {}).get('calls', 0)


def replica_of(sentinels):
    """The Popen of the replica of the current master."""
    master = sentinels.master_port()
    return [process for port, process in sentinels.redis.items() if port != master and process.poll() is None][0]


def in_sync(client):
    info = client.info('replication')
    return info.get('slave0', {}).get('offset') == info['master_repl_offset']


def replication_warnings(result):
    return [w for w in result.get('warnings', []) if 'Redis WAIT' in w or 'WAIT failed' in w]


def test_removals_through_sentinel_wait_for_the_replica(sentinels, ansible):
    """A purge, a trim, a filtered purge (celery_queue) and a removal by id (celery_task) through Sentinel each end
    with WAIT on the master: with the replica up it acknowledges, no warning; with the replica stopped (SIGSTOP)
    WAIT times out and each result warns that 0 of 1 replicas have the removal. Plain redis:// to the same master
    does not WAIT (nothing fails over there behind the module's back)."""
    add_ids, mail_ids = fill(sentinels, 'sq_wait_purge', 6)
    fill(sentinels, 'sq_wait_trim', 6)
    fill(sentinels, 'sq_wait_filtered', 6)
    task_ids, _others = fill(sentinels, 'sq_wait_task', 6)
    client = sentinels.master_client()
    client.wait(1, 10000)
    replica = replica_of(sentinels)
    play = [
        {'celeryops.fleet.celery_queue': sentinel_args(sentinels, queues=['sq_wait_purge'], state='purged')},
        {'celeryops.fleet.celery_queue': sentinel_args(sentinels, queues=['sq_wait_trim'], state='trimmed', keep=2)},
        {'celeryops.fleet.celery_queue': sentinel_args(sentinels, queues=['sq_wait_filtered'], state='purged',
                                                       task_names=['fleet_tasks.mail'])},
        {'celeryops.fleet.celery_task': sentinel_args(sentinels, queues=['sq_wait_task'], ids=task_ids[:2], timeout=1)},
    ]
    before = wait_calls(client)
    acknowledged = ansible.play(play, verbosity=3)
    waits = wait_calls(client) - before
    for result in acknowledged:
        assert not result.get('failed') and result['changed'], result
        assert not replication_warnings(result), result
    assert waits == 4, 'one WAIT per removal, got %d' % waits
    assert [q['removed'] for q in acknowledged[0]['queues'] + acknowledged[1]['queues'] + acknowledged[2]['queues']] \
        == [6, 4, 3]
    assert sorted(acknowledged[3]['removed']['sq_wait_task']) == sorted(task_ids[:2])

    fill(sentinels, 'sq_wait_purge', 6)
    fill(sentinels, 'sq_wait_trim', 6)
    fill(sentinels, 'sq_wait_filtered', 6)
    client.wait(1, 10000)
    play[3] = {'celeryops.fleet.celery_task': sentinel_args(sentinels, queues=['sq_wait_task'], ids=task_ids[2:],
                                                            timeout=1)}
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        paused = ansible.play(play, verbosity=3)
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    for result in paused:
        assert not result.get('failed') and result['changed'], result
        found = replication_warnings(result)
        assert len(found) == 1, result
        # The module says how many replicas have it: none, and what that means.
        assert unwrapped('0 of 1 replicas acknowledged it within 1.0s (Redis WAIT)') in unwrapped(found[0]), found
        assert unwrapped('the removed messages may come back') in unwrapped(found[0])
    named = [unwrapped(replication_warnings(result)[0]) for result in paused]
    for index, what in enumerate(["purge of 'sq_wait_purge'", "trim of 'sq_wait_trim'",
                                  "filtered purge of 'sq_wait_filtered'", "filtered purge of 'sq_wait_task'"]):
        assert unwrapped(what) in named[index], (what, named[index])
    assert sorted(paused[3]['removed']['sq_wait_task']) == sorted(task_ids[2:])
    # The replica catches up once it runs again: the set can still fail over with nothing lost (tests below).
    wait_for(lambda: in_sync(client), timeout=60, what='the replica to catch up')

    fill(sentinels, 'sq_wait_plain', 3)
    plain = 'redis://:%s@127.0.0.1:%d/0' % (sentinels.password, sentinels.master_port())
    before = wait_calls(client)
    result = ansible.module('celery_queue', dict(broker_url=plain, queues=['sq_wait_plain'], connect_timeout=2), verbosity=3)
    assert not result.get('failed') and result['queues'][0]['removed'] == 3, result
    assert wait_calls(client) == before and not replication_warnings(result), result
    assert_clean(ansible, sentinels.password, sentinels.sentinel_password)


# -- failover lists --------------------------------------------------------------------------

class Blackhole(object):
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def test_redis_failover_list_skips_a_refused_and_a_silent_url(redis_user, ansible):
    hole = Blackhole()
    db, closed = redis_user_db(redis_user), free_port()
    try:
        refused = 'redis://:%s@127.0.0.1:%d/%d' % (PASSWORDS[0], closed, db)
        silent = 'redis://:%s@127.0.0.1:%d/%d' % (PASSWORDS[1], hole.port, db)
        url = ';'.join([refused, silent, redis_user.url])
        result = ansible.module('celery_queue_info', dict(broker_url=url, connect_timeout=2, queues=['fq']), verbosity=3)
        seconds = ansible.task_seconds()[0]
    finally:
        hole.close()
    assert not result.get('failed'), result
    broker = result['broker']
    assert broker['port'] == 6379 and broker['user'] == redis_user.name
    assert broker['failover']['answered'] == 3 and broker['failover']['urls'] == 3
    skipped = broker['failover']['unreachable']
    assert [entry['endpoint'] for entry in skipped] == ['redis 127.0.0.1:%d db %d' % (port, db) for port in (closed, hole.port)]
    assert 'refused' in skipped[0]['error'].lower(), skipped
    assert 'timed out after 2.0s' in skipped[1]['error'], skipped
    # connect_timeout bounds the silent URL: its 2 s, and a margin for a loaded machine, not a hang.
    assert seconds < 2 * 2 + 6, seconds
    assert_clean(ansible, redis_user.password, *PASSWORDS)


def redis_user_db(user):
    return int(user.url.rsplit('/', 1)[1])


def test_redis_failover_list_all_down_fails_naming_each(ansible):
    urls = ['redis://:%s@127.0.0.1:%d/0' % (password, free_port()) for password in PASSWORDS]
    result = ansible.module('celery_queue_info', dict(broker_url=';'.join(urls), connect_timeout=2, queues=['q']),
                            verbosity=3)
    assert result.get('failed') and result['option'] == 'broker_url', result
    assert 'none of the 2 broker URLs answered' in result['msg']
    for url in urls:
        assert 'redis 127.0.0.1:%s db 0' % url.rsplit(':', 1)[1].split('/')[0] in result['msg']
    assert_clean(ansible, *PASSWORDS)


def test_amqp_failover_list_skips_a_refused_url(rabbit_user, ansible):
    refused = 'amqp://guest:%s@127.0.0.1:%d//' % (PASSWORDS[0], free_port())
    result = ansible.module('celery_queue_info', dict(broker_url=refused + ';' + rabbit_user.url, connect_timeout=3,
                                                      queues=['fq']), verbosity=3)
    assert not result.get('failed'), result
    assert result['broker']['port'] == 5672 and result['broker']['failover']['answered'] == 2
    assert result['queues'][0]['exists'] is False
    assert_clean(ansible, rabbit_user.password, PASSWORDS[0])


def test_mixed_transports_are_refused(ansible):
    result = ansible.module('celery_queue_info', dict(broker_url='redis://127.0.0.1:6379/0;amqp://h//', queues=['q']))
    assert result.get('failed') and result['option'] == 'broker_url', result
    assert 'one transport' in result['msg']


# -- the failover itself: last, each kills the master ------------------------------------------

def fill(sentinels, queue, count):
    """``count`` messages on ``queue`` as kombu writes them, every other one fleet_tasks.add (the rest
    fleet_tasks.mail), each with an id of its own; returns (add ids, mail ids)."""
    app = sentinel_app(sentinels)
    try:
        with app.producer_or_acquire() as producer:
            templates = dict((name, app.send_task(name, args=(1,), queue=queue + '_' + name, producer=producer).id)
                             for name in ('fleet_tasks.add', 'fleet_tasks.mail'))
    finally:
        app.close()
    client = sentinels.master_client()
    raws = dict((name, client.lpop(queue + '_' + name).decode()) for name in templates)
    ids = dict((name, []) for name in templates)
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        name = 'fleet_tasks.add' if index % 2 else 'fleet_tasks.mail'
        task_id = str(uuid.uuid4())
        ids[name].append(task_id)
        for raw_name, raw in raws.items():
            if raw_name == name:
                pipe.lpush(queue, raw.replace(templates[name], task_id))
        if index % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    return ids['fleet_tasks.add'], ids['fleet_tasks.mail']


def ids_on(client, queue):
    return [json.loads(raw)['headers']['id'] for raw in client.lrange(queue, 0, -1)]


def test_filtered_purge_in_flight_during_a_failover_fails_clearly_and_loses_nothing(sentinels, ansible):
    kept, dropped = fill(sentinels, 'sq_purge', 20000)
    client = sentinels.master_client()
    old = sentinels.master_port()
    # The replica holds every message before the master dies: what follows is the module's doing.
    client.wait(1, 10000)
    outcome = {}

    def run():
        # connect_timeout 10: asking the Sentinels must not fail on a loaded machine before the purge begins.
        outcome['result'] = ansible.module('celery_queue', sentinel_args(
            sentinels, queues=['sq_other', 'sq_purge', 'sq_after'], state='purged', task_names=['fleet_tasks.mail'],
            connect_timeout=10), verbosity=3)
    thread = threading.Thread(target=run)
    thread.start()
    killed = False
    try:
        # The module's connection to the master, or the module done already (then nothing is killed, and what it
        # says it removed must be gone): either way the outcome below is judged, with the module's message.
        wait_for(lambda: not thread.is_alive() or any(c.get('name') == 'celeryops.fleet' for c in client.client_list()),
                 timeout=120, what='the module to connect to the master')
        if thread.is_alive():
            sentinels.kill_master()
            killed = True
            sentinels.wait_failover(old)
    finally:
        thread.join(150)
    result = outcome['result']
    new = sentinels.master_client()
    left = ids_on(new, 'sq_purge')
    # Never a message twice, never a kept one lost, whenever the master died.
    assert len(left) == len(set(left)), 'a message is there twice'
    assert set(kept) <= set(left), '%d kept messages lost' % len(set(kept) - set(left))
    assert set(left) <= set(kept) | set(dropped)
    if result.get('failed'):
        # Part way: the message says what was done, what was not and what was in progress.
        assert 'purged before the failure' in result['msg'], result['msg']
        assert 'sq_after' in result['msg'] and result['option'], result
        assert "'sq_purge' was in progress" in result['msg'] or 'sq_purge' in result['msg'].split('before the failure')[1]
    else:
        # The module finished before the master died: what it says it removed is gone from the new master too.
        removed = dict((q['name'], q['removed']) for q in result['queues'])['sq_purge']
        assert removed == len(dropped) and not set(dropped) & set(left), (removed, len(set(dropped) & set(left)))
    assert_clean(ansible, sentinels.password, sentinels.sentinel_password)
    if killed:
        sentinels.restart_as_replica(old)


def test_wait_started_before_a_failover_finishes_on_the_new_master(sentinels, ansible, workers):
    app = sentinel_app(sentinels)
    try:
        ids = publish(app, 'sq_wait', 5)
    finally:
        app.close()
    client = sentinels.master_client()
    wait_for(lambda: client.llen('sq_wait') == 5, what='the messages')
    old = sentinels.master_port()
    outcome = {}

    def run():
        outcome['result'] = ansible.module('celery_queue_info', sentinel_args(
            sentinels, queues=['sq_wait'], max_messages=0, wait=True, wait_timeout=90, wait_sleep=0.5), verbosity=3)
    thread = threading.Thread(target=run)
    thread.start()
    try:
        # The module is waiting (the queue holds 5) when the master dies.
        wait_for(lambda: any(c.get('name') == 'celeryops.fleet' for c in client.client_list()), timeout=60,
                 what='the module to connect to the master')
        sentinels.kill_master()
        sentinels.wait_failover(old)
        new = sentinels.master_port()
        # The replica had the messages: a worker connected through Sentinel drains them from the new master.
        worker = workers.start(sentinels.url(), 'drain@fleet', ['sq_wait'], config=worker_config(sentinels))
    finally:
        thread.join(150)
    result = outcome['result']
    assert not result.get('failed'), (result, worker.log()[-2000:])
    assert result['queues'][0]['messages'] == 0
    assert result['broker']['port'] == new != old
    done = [i for i in ids if 'Task fleet_tasks.add[%s] succeeded' % i in worker.log()]
    assert sorted(done) == sorted(ids), worker.log()[-3000:]
    assert_clean(ansible, sentinels.password, sentinels.sentinel_password)
