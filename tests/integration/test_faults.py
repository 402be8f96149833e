"""Broker faults: restarts, stalls, memory alarms and dying workers, on brokers of the test's own.

Every module must end within its timeout with a message that names the broker and says what
happened; a wait loop rides out a broker restart within its wait budget. Times are the
modules' own (the callback's task durations), compared with a fast-failing task of the same
play, so that Ansible's start-up under load is not counted against a module.
"""

import os
import signal
import threading
import time
import uuid

import pytest

from harness import celery_app, close_publishers, free_port, publish


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic

SECRET = 'pw-' + uuid.uuid4().hex
MARGIN = 1.0  # "within its timeout plus a second"
# A task's time also holds Ansible's own work for it (forking, building and starting the module), which a
# loaded CI machine (the SSH fleet suite runs beside these) stretched by up to 3.5 s; the timeouts of the
# bounded tests are TIMEOUT, longer than that, so a module that waits out its timeout twice still fails.
LOAD_SLACK = 3.5
TIMEOUT = 5


def closed_port_url(transport):
    port = free_port()
    return 'redis://127.0.0.1:%d/0' % port if transport == 'redis' else 'amqp://guest:guest@127.0.0.1:%d//' % port


def every_module(url, timeout, queue='faults'):
    """One task per module (and the lookup), each bounded by ``timeout``."""
    broker = dict(broker_url=url, connect_timeout=timeout)
    lookup = "{{ lookup('celeryops.fleet.queue_depth', '%s', broker_url='%s', connect_timeout=%s) }}" % (
        queue, url, timeout)
    return [
        {'name': 'celery_queue_info', 'celeryops.fleet.celery_queue_info': dict(broker, queues=[queue])},
        {'name': 'celery_queue', 'celeryops.fleet.celery_queue': dict(broker, queues=[queue])},
        {'name': 'celery_worker_info', 'celeryops.fleet.celery_worker_info': dict(broker, timeout=timeout)},
        {'name': 'celery_worker', 'celeryops.fleet.celery_worker': dict(
            broker, nodes=['w1@nowhere'], state='consuming', queues=[queue], timeout=timeout)},
        {'name': 'celery_events_info', 'celeryops.fleet.celery_events_info': dict(broker, duration=60)},
        {'name': 'queue_depth', 'ansible.builtin.debug': {'msg': lookup}},
    ]


def assert_bounded(ansible, tasks, timeout, expected, label):
    """Run ``tasks`` after one fast-failing task; each must fail clearly, naming ``expected``
    (the broker), in less than ``timeout`` + MARGIN (+ LOAD_SLACK) beyond what the fast failure took."""
    fast = {'name': 'fast failure', 'celeryops.fleet.celery_queue_info': dict(
        broker_url=closed_port_url('redis' if 'redis' in expected else 'amqp'), queues=['faults'])}
    results = ansible.play([fast] + tasks, timeout=300)
    durations = ansible.task_seconds()
    baseline = durations[0]
    assert results[0].get('failed'), results[0]
    output = ansible.last['stdout'] + ansible.last['stderr']
    assert SECRET not in output
    for task, result, seconds in zip(tasks, results[1:], durations[1:]):
        name = task['name']
        assert result.get('failed'), (label, name, result)
        msg = result['msg']
        assert 'Traceback' not in msg, (label, name, msg)
        assert expected in msg, (label, name, msg)
        assert seconds < baseline + timeout + MARGIN + LOAD_SLACK, (label, name, seconds, baseline, msg)
    return results


# -- 2. a broker that accepts the connection and never answers ----------------------------

def behind_proxy(private, transport):
    """A private broker behind a StallingProxy: (server, proxy, url through the proxy, endpoint)."""
    if transport == 'redis':
        server = private.redis(password=SECRET)   # which no output may show
        proxy = private.proxy(server.port)
        return server, proxy, 'redis://:%s@127.0.0.1:%d/0' % (SECRET, proxy.port), 'redis 127.0.0.1:%d db 0' % proxy.port
    server = private.rabbit()
    proxy = private.proxy(server.port)
    return server, proxy, 'amqp://guest:guest@127.0.0.1:%d/%%2F' % proxy.port, 'amqp 127.0.0.1:%d vhost /' % proxy.port


@pytest.mark.parametrize('transport', ['redis', 'amqp'])
@pytest.mark.mitogen
def test_stalled_broker_every_module_fails_within_its_timeout(transport, private, ansible):
    server, proxy, url, expected = behind_proxy(private, transport)
    proxy.stall()
    timeout = TIMEOUT
    results = assert_bounded(ansible, every_module(url, timeout), timeout, expected, 'stalled ' + transport)
    for result in results[1:]:
        assert 'timed out' in result['msg'], result['msg']


@pytest.mark.parametrize('transport', ['redis', 'amqp'])
@pytest.mark.parametrize('module', ['events', 'workers'])
@pytest.mark.mitogen
def test_broker_stalling_mid_way_fails_the_module_soon_after(transport, module, private, ansible):
    """Silence is normal for an event listener and for a node count: the modules must still
    tell a broker that stopped answering from an idle fleet."""
    server, proxy, url, expected = behind_proxy(private, transport)
    if transport == 'amqp' and module == 'events':
        import pika
        connection = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', server.port))
        connection.channel().exchange_declare('celeryev', 'topic', durable=True)  # as a worker with -E would
        connection.close()
    timeout = TIMEOUT
    if module == 'events':
        task = {'celeryops.fleet.celery_events_info': dict(broker_url=url, connect_timeout=timeout, duration=60)}
        # One round trip a second proves the broker alive (ALIVE_EVERY), bounded by the timeout.
        bound = 1 + timeout + 0.5 + MARGIN + LOAD_SLACK
    else:
        # The fault must come while the module awaits the replies, after the handshake: on RabbitMQ that shows
        # through rabbitmqctl, an Erlang VM per call that took over 6 s on a loaded machine, so the wait outlasts it.
        replies = 6 if transport == 'redis' else 30
        task = {'celeryops.fleet.celery_worker_info': dict(broker_url=url, connect_timeout=timeout, timeout=replies,
                                                           expected_count=1)}
        # The replies are awaited for their whole timeout; a silent RabbitMQ shows when it is asked once more.
        bound = replies + timeout + 0.5 + MARGIN + LOAD_SLACK
    play = Background(ansible, [task])
    play.wait_connected(server, listening=module == 'events')
    stalled_at = time.time()
    proxy.stall()
    result = play.join()[0]
    assert result.get('failed'), result
    assert expected in result['msg'] and 'timed out' in result['msg'], result['msg']
    if module == 'events':
        assert 'stopped answering while listening for events' in result['msg'], result['msg']
    took = ansible.task_spans()[0][1] - stalled_at
    assert took < bound, (took, result['msg'])


# -- 1. the broker restarts while a module waits -------------------------------------------

class Background(object):
    """A play running in a thread while the test injects a fault."""

    def __init__(self, ansible, tasks):
        self.ansible = ansible
        self.results = self.error = None
        self.thread = threading.Thread(target=self._run, args=(tasks,), daemon=True)
        self.thread.start()

    def _run(self, tasks):
        try:
            self.results = self.ansible.play(tasks, timeout=300)
        except Exception as exc:  # handed to the test by join()
            self.error = exc

    def wait_connected(self, server, timeout=60, listening=False):
        """Until the module holds its connection to ``server`` (see module_connected); a play that
        ended first fails the test with its results (they say why it never waited). Returns the
        time.time() at which the connection was first seen (see module_connected)."""
        first_seen = []
        connected = module_connected(server, first_seen, listening)
        until(lambda: not self.thread.is_alive() or connected(), timeout, 'the module connecting')
        assert self.thread.is_alive(), ('the play ended before the fault', self.error, self.results)
        return first_seen[0]

    def join(self, timeout=300):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), 'the play did not end'
        if self.error:
            raise self.error
        return self.results


def until(predicate, timeout=60, what='a condition'):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError('%s did not happen within %ss' % (what, timeout))


def module_connected(server, first_seen, listening=False):
    """Whether a module holds a connection to a private broker (ours are all closed); with
    ``listening``, whether celery_events_info listens for events on it. The first time the
    connection shows is appended to the list ``first_seen``: on RabbitMQ when the kernel shows it,
    since the broker's own listing, asked next, can come seconds later."""

    def sighted(shown):
        if shown and not first_seen:
            first_seen.append(time.time())
        return shown
    if hasattr(server, 'ctl'):
        # As the broker lists it (the handshake done); rabbitmqctl starts an Erlang VM per call (seconds
        # on a loaded machine), so it is asked only once the kernel shows a connection.
        if listening:
            return lambda: sighted(established_to(server.port)) and any(
                line.startswith('celeryev.celeryops-fleet.') and line.split()[-1] != '0'
                for line in server.ctl('list_queues', 'name', 'consumers').splitlines())
        return lambda: sighted(established_to(server.port)) and 'celeryops.fleet' in server.ctl(
            'list_connections', 'client_properties')
    client = server.client()
    return lambda: sighted(any(c['name'].startswith('celeryops.fleet') and (not listening or int(c.get('psub') or 0) > 0)
                               for c in client.client_list()))


def established_to(port):
    """Whether a TCP connection to loopback ``port`` is established, from /proc/net/tcp."""
    with open('/proc/net/tcp') as table:
        for line in table.readlines()[1:]:
            _slot, _local, remote, state = line.split()[:4]
            if state == '01' and int(remote.rsplit(':', 1)[1], 16) == port:
                return True
    return False


def queue_wait_task(url, queue, wait_timeout):
    return {'name': 'wait', 'celeryops.fleet.celery_queue_info': dict(
        broker_url=url, queues=[queue], max_messages=0, wait=True, wait_timeout=wait_timeout, wait_sleep=0.5,
        connect_timeout=2)}


def worker_wait_task(url, node, wait_timeout):
    return {'name': 'wait', 'celeryops.fleet.celery_worker_info': dict(
        broker_url=url, expected_nodes=[node], wait=True, wait_timeout=wait_timeout, wait_sleep=0.5,
        timeout=1, connect_timeout=2)}


def empty_queue(server, queue):
    if hasattr(server, 'ctl'):
        server.ctl('purge_queue', queue)
    else:
        server.client().delete(queue)


@pytest.mark.parametrize('transport', ['redis', 'amqp'])
def test_queue_wait_rides_out_a_broker_restart(transport, private, ansible):
    """The backlog survives the restart (persistence, durable queue), so the wait can only
    end by reconnecting and seeing the queue emptied afterwards."""
    server = private.redis(persist=True) if transport == 'redis' else private.rabbit()
    publish(server.url, 'fleet_tasks.add', 'faults', args=(1, 2), count=5)
    close_publishers()
    play = Background(ansible, [queue_wait_task(server.url, 'faults', 120)])
    play.wait_connected(server)
    # Down for longer than wait_sleep: a poll finds nothing listening.
    server.restart(down_for=2) if transport == 'redis' else server.restart()
    empty_queue(server, 'faults')
    result = play.join()[0]
    assert not result.get('failed'), result
    assert result['queues'][0]['messages'] == 0
    assert result['waited'] < 120


def test_queue_wait_rides_out_a_silent_spell(private, ansible):
    """A broker that stops answering for longer than connect_timeout (SIGSTOP), then comes back."""
    server = private.redis()
    publish(server.url, 'fleet_tasks.add', 'faults', args=(1, 2), count=5)
    close_publishers()
    task = queue_wait_task(server.url, 'faults', 120)
    task['celeryops.fleet.celery_queue_info']['connect_timeout'] = 1
    play = Background(ansible, [task])
    play.wait_connected(server)
    server.pause()
    time.sleep(4)
    server.resume()
    server.client().delete('faults')
    result = play.join()[0]
    assert not result.get('failed'), result
    assert result['queues'][0]['messages'] == 0
    assert result['waited'] > 3


@pytest.mark.parametrize('transport', ['redis', 'amqp'])
def test_worker_wait_rides_out_a_broker_restart(transport, private, ansible, workers):
    server = private.redis() if transport == 'redis' else private.rabbit()
    node = 'faults-%s@localhost' % uuid.uuid4().hex[:6]
    play = Background(ansible, [worker_wait_task(server.url, node, 150)])
    play.wait_connected(server)
    if transport == 'redis':
        server.restart(down_for=2)
    else:
        server.kill()  # no goodbye to the clients: their sockets just die
        server.start()
    workers.start(server.url, node, ['faults'])
    result = play.join()[0]
    assert not result.get('failed'), result
    assert result['online'] == [node]


@pytest.mark.parametrize('transport', ['redis', 'amqp'])
@pytest.mark.parametrize('module', ['queue', 'worker'])
def test_wait_fails_within_its_timeout_when_the_broker_stays_away(transport, module, private, ansible):
    server = private.redis() if transport == 'redis' else private.rabbit()
    if module == 'queue':
        publish(server.url, 'fleet_tasks.add', 'faults', args=(1, 2), count=2)
        close_publishers()
    wait_timeout = 8
    if module == 'queue':
        task = queue_wait_task(server.url, 'faults', wait_timeout)
    else:
        task = worker_wait_task(server.url, 'faults-w@nowhere', wait_timeout)
    play = Background(ansible, [task])
    connected_at = play.wait_connected(server)
    (server.kill if transport == 'amqp' else server.stop)()
    result = play.join()[0]
    assert result.get('failed'), result
    assert 'went away while waiting' in result['msg'], result['msg']
    assert '127.0.0.1:%d' % server.port in result['msg'], result['msg']
    assert result['option'] == 'wait_timeout'
    # It kept trying for its wait_timeout, and no longer (plus one connect_timeout for an attempt
    # under way), counted from when its connection first showed: its wait starts right after that.
    waited = ansible.task_spans()[0][1] - connected_at
    assert wait_timeout - 1 < waited < wait_timeout + 2 + 0.5 + MARGIN + LOAD_SLACK, (waited, result['msg'])


# -- 3. RabbitMQ resource alarm: publishers are blocked ----------------------------------------

def test_memory_alarm_blocks_control_but_not_queue_work(private, ansible):
    server = private.rabbit()
    publish(server.url, 'fleet_tasks.add', 'faults', args=(1, 2), count=3)
    close_publishers()
    server.memory_alarm(True)
    try:
        until(lambda: 'memory' in server.ctl('eval', 'rabbit_alarm:get_alarms().'), 30, 'the memory alarm')
        timeout = TIMEOUT
        broker = dict(broker_url=server.url, connect_timeout=timeout)
        publishers = [
            {'name': 'celery_worker_info', 'celeryops.fleet.celery_worker_info': dict(
                broker, timeout=timeout, expected_count=1)},
            {'name': 'celery_worker_info wait', 'celeryops.fleet.celery_worker_info': dict(
                broker, timeout=timeout, expected_count=1, wait=True, wait_timeout=60)},
            {'name': 'celery_worker', 'celeryops.fleet.celery_worker': dict(
                broker, state='drained', timeout=timeout, wait_timeout=60)},
        ]
        queue_work = [
            {'name': 'celery_queue_info', 'celeryops.fleet.celery_queue_info': dict(broker, queues=['faults'])},
            {'name': 'celery_queue', 'celeryops.fleet.celery_queue': dict(broker, queues=['faults'])},
        ]
        expected = 'amqp 127.0.0.1:%d vhost /' % server.port
        results = assert_bounded(ansible, publishers, timeout, expected, 'memory alarm')
        for result in results[1:]:
            assert 'blocked the connection (memory or disk alarm' in result['msg'], result['msg']
        # Reading and purging publish nothing, so they still work: purging is what frees memory.
        info, purge = ansible.play(queue_work)
        assert not info.get('failed') and info['queues'][0]['messages'] == 3, info
        assert not purge.get('failed') and purge['queues'][0]['removed'] == 3, purge
    finally:
        server.memory_alarm(False)


# -- 4. a worker killed during a drain ---------------------------------------------------------

@pytest.mark.parametrize('transport', ['redis', 'amqp'])
def test_worker_killed_during_drain_is_gone_and_the_rest_drains(transport, request, ansible, workers):
    broker = request.getfixturevalue('redis_env' if transport == 'redis' else 'rabbit_env')
    tag = uuid.uuid4().hex[:6]
    doomed, survivor = 'doomed-%s@localhost' % tag, 'survivor-%s@localhost' % tag
    killed = workers.start(broker.url, doomed, ['faults_a'], concurrency=1, prefetch=1)
    workers.start(broker.url, survivor, ['faults_b'], concurrency=1, prefetch=1)
    publish(broker.url, 'fleet_tasks.sleep', 'faults_a', args=(120,))   # would hold the drain for minutes
    publish(broker.url, 'fleet_tasks.sleep', 'faults_b', args=(6,))     # the drain waits for this one
    inspect = celery_app(broker.url).control.inspect(destination=[doomed, survivor], timeout=1)

    def busy():
        active = inspect.active() or {}
        return all(active.get(node) for node in (doomed, survivor))
    until(busy, 60, 'both workers running their task')
    play = Background(ansible, [{'name': 'drain', 'celeryops.fleet.celery_worker': dict(
        broker_url=broker.url, nodes=[doomed, survivor], state='drained', timeout=2, wait_timeout=100)}])

    def cancelled():
        queues = inspect.active_queues() or {}
        return doomed in queues and not queues[doomed]
    until(cancelled, 90, 'the module cancelling the consumers')
    killed.kill()
    result = play.join()[0]
    seconds = ansible.task_seconds()[0]
    close_publishers()
    assert not result.get('failed'), result
    assert result['changed']
    assert result['gone'] == [doomed]
    assert any(doomed in w for w in result.get('warnings', [])), result.get('warnings')
    assert result['nodes'][doomed]['after'] is None
    after = result['nodes'][survivor]['after']
    assert after['queues'] == [] and after['active'] == 0 and after['reserved'] == 0, after
    # Not waited for until wait_timeout (100 s), nor for the killed node's 120 s task.
    assert seconds < 60, seconds


# -- 5. Redis restarted during a purge of several queues ---------------------------------------

SEP = '\x06\x16'


def dumps(client, exclude=()):
    """key -> DUMP of every key (as harness RedisBroker.snapshot): byte-exact state."""
    return dict((key, client.dump(key)) for key in client.scan_iter(count=1000) if key not in exclude)


def test_redis_killed_during_a_purge_says_which_queues_were_done(private, ansible):
    server = private.redis(persist=True)
    client = server.client()
    names = ['purge_%02d' % i for i in range(12)]
    for name in names + ['kept']:
        publish(server.url, 'fleet_tasks.add', name, args=(1, 2))   # real envelopes and bindings
    close_publishers()
    message = client.lindex('kept', 0)
    pipe = client.pipeline(transaction=False)
    for name in names + ['kept']:
        for key in (name, name + SEP + '3'):
            pipe.lpush(key, *[message] * 2000)
    pipe.hset('unacked', 'some-tag', b'["held", "", "kept"]')
    pipe.set('unrelated', 'value')
    pipe.execute()
    queue_keys = set(key for name in names for key in (name.encode(), (name + SEP + '3').encode()))
    before = dumps(client)
    untouched = dict((k, v) for k, v in before.items() if k not in queue_keys)

    def kill_once_the_second_queue_went():
        watcher = server.client()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and watcher.llen(names[1] + SEP + '3'):
            time.sleep(0.001)
        os.kill(server.process.pid, signal.SIGKILL)
    killer = threading.Thread(target=kill_once_the_second_queue_went, daemon=True)
    killer.start()
    play = Background(ansible, [{'name': 'purge', 'celeryops.fleet.celery_queue': dict(
        broker_url=server.url, queues=names, connect_timeout=2)}])
    killer.join(150)
    server.process.wait(10)
    time.sleep(1)
    server.start()
    result = play.join()[0]
    seconds = ansible.task_seconds()[0]
    client = server.client()
    after = dumps(client)
    assert dict((k, v) for k, v in after.items() if k not in queue_keys) == untouched
    assert seconds < 30, seconds
    if not result.get('failed'):
        assert all(not client.exists(key) for key in queue_keys), after.keys()
        assert [q['name'] for q in result['queues']] == names
        return
    msg = result['msg']
    assert 'redis 127.0.0.1:%d db 0' % server.port in msg, msg
    done = [q['name'] for q in result['queues']]
    assert done + result['pending'] == names, result
    assert 'purged before the failure: %s' % (', '.join(done) or 'none') in msg, msg
    assert 'not done: %s' % ', '.join(result['pending']) in msg, msg
    assert names[0] in done, 'the kill came after the second queue went: the first is done'
    for name in done:
        assert not client.exists(name, name + SEP + '3'), name
    in_progress = result['pending'][0]
    for name in result['pending']:
        for key in (name, name + SEP + '3'):
            if name == in_progress:   # each priority key is purged in one transaction: all or nothing
                assert after.get(key.encode()) in (None, before[key.encode()]), key
            else:
                assert after.get(key.encode()) == before[key.encode()], key


@pytest.mark.parametrize('transport', ['redis', 'amqp'])
def test_drain_across_a_broker_restart_does_not_take_nodes_for_gone(transport, private, ansible, workers):
    """The workers lose the broker too and reconnect on their own schedule: silence right after
    the broker came back is not death."""
    server = private.redis(persist=True) if transport == 'redis' else private.rabbit()
    node = 'restart-%s@localhost' % uuid.uuid4().hex[:6]
    workers.start(server.url, node, ['faults'], concurrency=1, prefetch=1)
    publish(server.url, 'fleet_tasks.sleep', 'faults', args=(15,))
    close_publishers()
    inspect = celery_app(server.url).control.inspect(destination=[node], timeout=1)
    until(lambda: (inspect.active() or {}).get(node), 60, 'the worker running its task')
    play = Background(ansible, [{'name': 'drain', 'celeryops.fleet.celery_worker': dict(
        broker_url=server.url, nodes=[node], state='drained', timeout=2, wait_timeout=120, connect_timeout=2)}])
    until(lambda: (inspect.active_queues() or {}).get(node) == [], 90, 'the module cancelling the consumer')
    close_publishers()
    if transport == 'redis':
        server.restart(down_for=2)
    else:
        server.restart()
    result = play.join()[0]
    assert not result.get('failed'), (result.get('msg'), result)
    assert result['gone'] == [], result
    after = result['nodes'][node]['after']
    assert after is not None and after['active'] == 0 and after['reserved'] == 0, result
    # The worker reconnected without taking the cancelled queue back.
    assert after['queues'] == [], after
