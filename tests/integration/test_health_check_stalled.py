"""health_check names stalled consumers: a real worker that answers ping and lists the queue in active_queues but
takes nothing from it while messages wait, run through ansible-playbook as an operator runs it. On Redis its consuming
connection (the one that BRPOPs) hangs, as a half-open TCP connection after a network blip, while its pidbox and
publishing connections work; on RabbitMQ the deliveries of its consumer channel never arrive while its pidbox channel
on the same connection works. A worker whose consumer of the queue was cancelled (control cancel_consumer) no longer
lists it: that is not a stall, and is not flagged. Prefetch starvation for real: tasks prefetched behind a long task
on a one-process worker while another worker of the same queue idles."""

import socket
import struct
import threading
import time

import pytest

from harness import AMQP_PORT, publish, wait_for
from private_brokers import StallingProxy


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


class _Gate(object):
    """The source side of one direction of a proxied connection: notes the connections that carry a Redis BRPOP
    (kombu's consumer connection: the pidbox and the publishes go over others) and, once the proxy cuts them,
    passes nothing more on them."""

    def __init__(self, proxy, source, upstream, watch):
        self.proxy, self.source, self.upstream, self.watch = proxy, source, upstream, watch

    def settimeout(self, seconds):
        self.source.settimeout(seconds)

    def recv(self, size):
        if self.proxy.cut.is_set() and self.upstream in self.proxy.consumers:
            time.sleep(0.2)
            raise socket.timeout()
        data = self.source.recv(size)
        if self.watch and b'BRPOP' in data:
            self.proxy.consumers.add(self.upstream)
        return data


class ConsumerHangingProxy(StallingProxy):
    """A StallingProxy to Redis that, after ``hang_consumers()``, holds every byte of the connections that carried a
    BRPOP, both ways, and keeps them open; every other connection goes on working."""

    def __init__(self, target_port):
        self.cut = threading.Event()
        self.consumers = set()
        super().__init__(target_port)

    def hang_consumers(self):
        self.cut.set()

    def _pump(self, source, sink, held, downstream):
        upstream = source if downstream else sink
        super()._pump(_Gate(self, source, upstream, not downstream), sink, held, downstream)


class _Frames(object):
    """An AMQP 0-9-1 byte stream cut into whole frames: (type, channel, payload, the frame's bytes) each."""

    def __init__(self, header=0):
        self.buffer, self.header = b'', header

    def feed(self, data):
        self.buffer += data
        if self.header:  # the client's protocol header, before any frame
            if len(self.buffer) < self.header:
                return []
            self.buffer, self.header = self.buffer[self.header:], 0
        frames = []
        while len(self.buffer) >= 7:
            kind, channel, size = struct.unpack('>BHI', self.buffer[:7])
            if len(self.buffer) < size + 8:
                break
            frames.append((kind, channel, self.buffer[7:7 + size], self.buffer[:size + 8]))
            self.buffer = self.buffer[size + 8:]
        return frames


class _AmqpGate(_Gate):
    """For AMQP: notes the channel on which the client consumes the proxy's queue (basic.consume) and, once the proxy
    cuts it, passes nothing the broker sends on that channel: deliveries that never arrive, while the worker's other
    channels (its pidbox: ping, inspect) on the same connection go on working."""

    def __init__(self, proxy, source, upstream, watch):
        super().__init__(proxy, source, upstream, watch)
        self.frames = _Frames(header=8 if watch else 0)

    def recv(self, size):
        data = self.source.recv(size)
        if not data:
            return data
        frames = self.frames.feed(data)
        if self.watch:
            for kind, channel, payload, _frame in frames:
                # A method frame of basic.consume (class 60, method 20): reserved short, then the queue's shortstr.
                if kind == 1 and payload[:4] == struct.pack('>HH', 60, 20) and \
                        payload[7:7 + payload[6]] == self.proxy.queue.encode():
                    self.proxy.consumers[self.upstream] = channel
            return data
        cut = self.proxy.consumers.get(self.upstream) if self.proxy.cut.is_set() else None
        out = b''.join(frame for _kind, channel, _payload, frame in frames if channel != cut or channel is None)
        if not out:
            raise socket.timeout()
        return out


class DeliveryDroppingProxy(ConsumerHangingProxy):
    """A StallingProxy to RabbitMQ that, after ``hang_consumers()``, drops what the broker sends on the channel that
    consumes ``queue``, as a consumer channel that is dead while the connection lives."""

    def __init__(self, target_port, queue):
        self.queue = queue
        super().__init__(target_port)
        self.consumers = {}

    def _pump(self, source, sink, held, downstream):
        upstream = source if downstream else sink
        StallingProxy._pump(self, _AmqpGate(self, source, upstream, not downstream), sink, held, downstream)


def through(proxy, broker):
    """The URL of the test's Redis database through the proxy."""
    return 'redis://127.0.0.1:%d/%d' % (proxy.port, broker.db)


def fleet(url, node, **extra):
    return dict(celery_fleet_hosts='localhost', celery_expected_nodes=[node], celery_broker_url=url, **extra)


def test_a_worker_that_answers_but_no_longer_consumes_is_a_stalled_row_naming_node_and_queue(redis_env, ansible, workers, tmp_path):
    proxy = ConsumerHangingProxy(redis_env.client.connection_pool.connection_kwargs['port'])
    try:
        workers.start(through(proxy, redis_env), 'stuck@fleet', ['work'])
        wait_for(lambda: proxy.consumers, what='the worker to consume through the proxy')
        proxy.hang_consumers()
        # kombu's BRPOP waits 1 s on the server: past that, none pending there would take a message into the void.
        time.sleep(1.5)
        ids = publish(redis_env.url, 'fleet_tasks.add', 'work', args=(1, 1), count=3)
        time.sleep(2)  # a consuming worker would have taken them by now
        assert redis_env.client.llen('work') == 3
        info = ansible.module('celery_worker_info', dict(broker_url=redis_env.url, expected_nodes=['stuck@fleet'],
                                                         include=['ping', 'active', 'reserved', 'active_queues']))
        reply = info['workers']['stuck@fleet']
        assert reply['queues'] == ['work'] and reply['active'] == [] and reply['reserved'] == [], reply

        junit = str(tmp_path / 'health.xml')
        prom = str(tmp_path / 'fleet.prom')
        tasks = ansible.playbook('health_check', fleet(redis_env.url, 'stuck@fleet', health_check_junit_file=junit,
                                                       health_check_prometheus_file=prom))
        assert ansible.last['rc'] != 0, ansible.last['stdout'][-3000:]
        message = tasks['Fail naming what is unhealthy']['msg']
        assert ('stuck@fleet (host localhost): queue work stalled: 3 ready messages, and stuck@fleet lists it in '
                'active_queues but is idle (nothing active or reserved)') in message, message
        # The node itself answers and consumes what it should: only the stall is a problem.
        assert message.count('stuck@fleet') == 2, message
        table = tasks['Print the fleet summary']['msg']
        assert any(line.startswith('stalled on stuck@fleet: queue work stalled') for line in table), table
        with open(junit) as handle:
            report = handle.read()
        assert '<testcase classname="stalled" name="stuck@fleet work">' in report and 'failures="1"' in report, report
        with open(prom) as handle:  # the metrics of the same run are still written
            assert 'celery_fleet_healthy{source="health_check"} 0' in handle.read()

        # Across a window the worker stays idle and nothing leaves the queue: the same row, saying so.
        tasks = ansible.playbook('health_check', fleet(redis_env.url, 'stuck@fleet', health_check_stall_window=2))
        assert ansible.last['rc'] != 0, ansible.last['stdout'][-3000:]
        message = tasks['Fail naming what is unhealthy']['msg']
        assert ('queue work stalled: 3 ready messages at the start of a 2 s window and 3 at its end, and stuck@fleet '
                'lists it in active_queues but is idle') in message, message
        assert redis_env.client.llen('work') == 3 and sorted(ids)
    finally:
        proxy.close()


@pytest.mark.parametrize('value', ['soon', -1, 1.5, '1; rm -rf /'])
def test_a_stall_window_that_is_no_number_of_seconds_fails_naming_it(redis_env, ansible, value):
    tasks = ansible.playbook('health_check', fleet(redis_env.url, 'any@fleet', health_check_stall_window=value))
    assert ansible.last['rc'] != 0
    message = tasks['Fail when health_check_stall_window is not a whole number of seconds']['msg']
    assert message == 'health_check_stall_window must be a whole number of seconds (0 for one sample), got %s' % value, message
    assert 'Ask every worker of the fleet at once' not in tasks


def test_a_worker_whose_rabbitmq_deliveries_no_longer_arrive_is_a_stalled_row(rabbit_env, ansible, workers, tmp_path):
    proxy = DeliveryDroppingProxy(AMQP_PORT, 'work')
    try:
        url = rabbit_env.url.replace(':%d/' % AMQP_PORT, ':%d/' % proxy.port)
        assert url != rabbit_env.url
        # One process and a prefetch of one: RabbitMQ sends it one message, lost, and keeps the rest ready.
        workers.start(url, 'deaf@fleet', ['work'], concurrency=1, prefetch=1)
        wait_for(lambda: proxy.consumers, what='the worker to consume through the proxy')
        proxy.hang_consumers()
        publish(rabbit_env.url, 'fleet_tasks.add', 'work', args=(1, 1), count=4)
        wait_for(lambda: (rabbit_env.queue('work').get('messages_ready'), rabbit_env.queue('work').get('messages_unacknowledged'))
                 == (3, 1), what='one message delivered into the void and three ready')

        junit = str(tmp_path / 'health.xml')
        tasks = ansible.playbook('health_check', fleet(rabbit_env.url, 'deaf@fleet', health_check_junit_file=junit))
        assert ansible.last['rc'] != 0, ansible.last['stdout'][-3000:]
        message = tasks['Fail naming what is unhealthy']['msg']
        assert message == ('Celery fleet unhealthy: deaf@fleet (host localhost): queue work stalled: 3 ready messages, and '
                           'deaf@fleet lists it in active_queues but is idle (nothing active or reserved)'), message
        with open(junit) as handle:
            assert '<testcase classname="stalled" name="deaf@fleet work">' in handle.read()
    finally:
        proxy.close()


def test_a_worker_whose_consumer_was_cancelled_is_not_a_stall(redis_env, ansible, workers):
    workers.start(redis_env.url, 'drained@fleet', ['work', 'other'])
    result = ansible.module('celery_worker', dict(broker_url=redis_env.url, nodes=['drained@fleet'], state='consuming',
                                                  queues=['other'], exclusive=True))
    assert result['changed'], result
    publish(redis_env.url, 'fleet_tasks.add', 'work', args=(1, 1), count=3)
    time.sleep(2)
    assert redis_env.client.llen('work') == 3  # nobody takes them: the worker consumes only `other` now

    tasks = ansible.playbook('health_check', fleet(redis_env.url, 'drained@fleet', health_check_queues=['work']))
    assert ansible.last['rc'] == 0, (tasks.get('Fail naming what is unhealthy'), ansible.last['stdout'][-3000:])
    table = tasks['Print the fleet summary']['msg']
    assert not any('stalled' in line for line in table) and 'queue work: 3 ready, 0 unacked' in table, table


def test_a_busy_worker_with_tasks_reserved_behind_its_busy_pool_is_neither_stalled_nor_starved(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'busy@fleet', ['work'], concurrency=2, prefetch=4)
    publish(url, 'fleet_tasks.sleep', 'work', args=(30,), count=4)

    def held():
        info = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=['busy@fleet'],
                                                         include=['active', 'reserved', 'stats']))
        reply = info['workers']['busy@fleet']
        return len(reply['active']) == 2 and len(reply['reserved']) == 2 and reply

    reply = wait_for(held, what='two tasks active and two reserved')
    assert reply['stats']['pool']['max-concurrency'] == 2, reply['stats']
    tasks = ansible.playbook('health_check', fleet(url, 'busy@fleet', health_check_queues=['work']))
    assert ansible.last['rc'] == 0, (tasks.get('Fail naming what is unhealthy'), ansible.last['stdout'][-3000:])


def test_tasks_prefetched_behind_a_long_task_while_another_worker_idles_are_prefetch_starvation(broker, ansible, workers):
    # Celery's own example of why long tasks want a prefetch multiplier of 1: one process, four messages prefetched.
    url = broker.url
    workers.start(url, 'hoarder@fleet', ['work'], concurrency=1, prefetch=4)
    [long_id] = publish(url, 'fleet_tasks.sleep', 'work', args=(60,))

    def state(node):
        info = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=[node], include=['active', 'reserved']))
        reply = info['workers'][node]
        return [task['id'] for task in reply['active']], [task['id'] for task in reply['reserved']]

    wait_for(lambda: state('hoarder@fleet')[0] == [long_id], what='the long task to run')
    short = publish(url, 'fleet_tasks.add', 'work', args=(1, 1), count=3)
    wait_for(lambda: sorted(state('hoarder@fleet')[1]) == sorted(short), what='the short tasks to be prefetched')
    workers.start(url, 'idle@fleet', ['work'], concurrency=1, prefetch=4)

    nodes = dict(celery_fleet_hosts='localhost', celery_expected_nodes=['hoarder@fleet', 'idle@fleet'], celery_broker_url=url)
    tasks = ansible.playbook('health_check', dict(nodes, health_check_stall_window=1))
    assert ansible.last['rc'] != 0, ansible.last['stdout'][-3000:]
    message = tasks['Fail naming what is unhealthy']['msg']
    assert ('hoarder@fleet (host localhost): prefetch starvation: 3 task(s) reserved behind its 1 busy process(es) while '
            'idle@fleet, consuming the same queue, has idle processes (at both ends of a 1 s window)') in message, message
    assert 'idle@fleet (host localhost)' not in message and 'stalled' not in message, message
    assert sorted(state('hoarder@fleet')[1]) == sorted(short)  # still waiting: the check changed nothing
