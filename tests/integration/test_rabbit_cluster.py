"""Issue 18, RabbitMQ clusters and queue types: the modules on a real three-node RabbitMQ cluster of the test module's
own (private_brokers.PrivateRabbitCluster: nodes A, B, C on loopback, started once for the module), through
ansible-playbook.

What only a cluster shows: a quorum queue led by another node than the one the module is connected to, the management
API of that node down while another member's answers, the node in broker_url stopped (the failover list takes the
next), workers connected to another node than the module, and a quorum queue's leader stopped. Messages are counted by
task id before and after, from a passive declare (which neither delivers nor requeues) and one final consume-and-ack.
"""

import base64
import json
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request

import pika
import pytest

from harness import close_publishers, publish, recorded, wait_for
from private_brokers import PrivateRabbitCluster, wait_port
from test_adversarial_quorum import drain as quorum_drain, ready as quorum_ready, refused, send as quorum_send

# The module's own work on the brokers, alike on every ansible-core (conftest). One xdist worker runs them all
# (scripts/test: --dist loadgroup), so that one cluster is started per run, not one per worker.
pytestmark = [pytest.mark.module_logic, pytest.mark.xdist_group('rabbit_cluster')]

ADD = 'fleet_tasks.add'
MAIL = 'fleet_tasks.mail'


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    """Started once for the module (about 40 s on two cores); every test leaves its three nodes running."""
    made = PrivateRabbitCluster(str(tmp_path_factory.mktemp('rabbit-cluster')))
    try:
        made.start()
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def nodes(cluster):
    """(A, B, C), with no queue in the cluster's vhost at the start and at the end."""
    cluster.wait_running(cluster.nodes)
    reset(cluster)
    yield cluster.nodes
    close_publishers()
    cluster.wait_running(cluster.nodes)
    reset(cluster)


def api(node, method, path, body=None):
    """The management API of ``node`` (guest), decoded."""
    request = urllib.request.Request(node.management_url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header('Authorization', 'Basic ' + base64.b64encode(b'guest:guest').decode())
    request.add_header('content-type', 'application/json')
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text else None


def reset(cluster):
    for queue in api(cluster.nodes[0], 'GET', '/api/queues/%2F?columns=name') or []:
        try:
            api(cluster.nodes[0], 'DELETE', '/api/queues/%%2F/%s' % urllib.parse.quote(queue['name'], safe=''))
        except urllib.error.HTTPError:
            pass


def connect(node):
    return pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', node.port, '/', pika.PlainCredentials('guest', 'guest'),
                                                             blocked_connection_timeout=30))


def declare_quorum(node, name, **arguments):
    """A quorum queue declared through ``node``: RabbitMQ makes that node its leader (client-local)."""
    connection = connect(node)
    try:
        connection.channel().queue_declare(name, durable=True, arguments=dict(arguments, **{'x-queue-type': 'quorum'}))
    finally:
        connection.close()


# The quorum tests' helpers, through a node of the cluster.
def send(node, name, tasks):
    return quorum_send(lambda: connect(node), name, tasks)


def ready(node, name):
    return quorum_ready(lambda: connect(node), name)


def drain(node, name):
    return quorum_drain(lambda: connect(node), name, quiet=3)


def record(node, name):
    return api(node, 'GET', '/api/queues/%%2F/%s' % urllib.parse.quote(name, safe=''))


def management_urls(nodes):
    return [node.management_url for node in nodes]


def info(**args):
    return {'celeryops.fleet.celery_queue_info': args}


def change(**args):
    return {'celeryops.fleet.celery_queue': args}


def test_quorum_queue_led_by_another_node_is_described_and_never_read(nodes, ansible):
    a, b, c = nodes
    declare_quorum(b, 'qq', **{'x-delivery-limit': 2})
    assert record(a, 'qq')['leader'] == b.node
    ids = send(b, 'qq', [ADD, MAIL, ADD, MAIL, ADD, ADD])
    url, mgmt = a.url, management_urls(nodes)

    results = ansible.play([info(broker_url=url, management_url=mgmt, queues=['qq'])]
                           + [info(broker_url=url, management_url=mgmt, queues=['qq'], breakdown=True)] * 3
                           + [info(broker_url=url, management_url=mgmt, queues=['qq'], peek=2)] * 3 + [
        change(broker_url=url, management_url=mgmt, queues=['qq'], task_names=[MAIL]),
        change(broker_url=url, management_url=mgmt, queues=['qq'], state='trimmed', keep=2),
        dict(change(broker_url=url, management_url=mgmt, queues=['qq'], task_names=[MAIL]), check_mode=True),
    ])
    described = results[0]
    assert not described.get('failed') and not described.get('management_error'), described
    assert described['broker']['port'] == a.port
    [queue] = described['queues']
    assert (queue['type'], queue['leader'], queue['messages']) == ('quorum', b.node, 6), queue
    assert sorted(queue['members']) == sorted(queue['online']) == sorted(node.node for node in nodes), queue
    assert queue['delivery_limit'] == 2 and queue['dead_letter'] is None and queue['priorities'] is None, queue
    for result in results[1:4]:
        refused(result, 'qq', 'breakdown')
    for result in results[4:7]:
        refused(result, 'qq', 'peek')
    refused(results[7], 'qq', 'task_names')
    refused(results[8], 'qq', 'state=trimmed')
    refused(results[9], 'qq', 'task_names')
    # Six reads of a queue with a delivery limit of 2 would have dropped all; each requeue would have reordered it.
    assert ready(a, 'qq') == 6
    assert record(b, 'qq')['leader'] == b.node
    assert drain(c, 'qq') == ids

    again = send(c, 'qq', [ADD] * 4)
    purge, after = ansible.play([change(broker_url=url, management_url=mgmt, queues=['qq']),
                                 info(broker_url=url, management_url=mgmt, queues=['qq'])])
    assert not purge.get('failed') and purge['changed'] is True, purge
    assert purge['queues'] == [dict(name='qq', exists=True, before=len(again), removed=len(again), after=0, unacked=0,
                                    type='quorum')], purge
    assert after['queues'][0]['messages'] == 0 and ready(b, 'qq') == 0


def test_management_api_of_the_node_in_the_url_down_another_answers(cluster, nodes, ansible):
    a, b, c = nodes
    ids = publish(a.url, ADD, 'work', args=(1, 1), count=5)
    declare_quorum(c, 'qq')
    send(c, 'qq', [ADD] * 3)
    # A consumer on C holds two messages of 'work' unacknowledged.
    holder = connect(c)
    try:
        channel = holder.channel()
        channel.basic_qos(prefetch_count=2)
        held = []
        channel.basic_consume('work', lambda _ch, method, _props, _body: held.append(method.delivery_tag))
        wait_for(lambda: holder.process_data_events(0.2) or len(held) == 2, 30, 'two deliveries')
        wait_for(lambda: record(b, 'work').get('messages_unacknowledged') == 2, 30, 'the API to count 2 unacked')

        a.ctl('eval', 'application:stop(rabbitmq_management).')
        wait_for(lambda: not port_open(a.management_port), 30, "A's management API to stop")
        try:
            every, only_a = ansible.play([
                info(broker_url=a.url, management_url=management_urls(nodes)),
                info(broker_url=a.url, management_url=a.management_url, queues=['work']),
            ])
        finally:
            a.ctl('eval', '{ok, _} = application:ensure_all_started(rabbitmq_management).')
            wait_port(a.management_port, 60, "A's management API")
        holder.process_data_events(0)
    finally:
        holder.close()

    assert not every.get('failed') and not every.get('management_error'), every
    queues = dict((q['name'], q) for q in every['queues'])
    assert sorted(queues) == ['qq', 'work'], every   # discovery: every queue, from B's API
    assert (queues['work']['messages'], queues['work']['unacked'], queues['work']['consumers']) == (3, 2, 1), queues
    assert queues['work']['source'] == 'amqp+management' and queues['work']['type'] == 'classic'
    assert (queues['qq']['messages'], queues['qq']['leader']) == (3, c.node), queues
    # The same with A's API alone: it really was down (no unacked count, and why).
    assert not only_a.get('failed') and only_a['queues'][0]['unacked'] is None, only_a
    assert a.management_url in only_a['management_error'], only_a
    assert sorted(drain(b, 'work')) == sorted(ids)


def port_open(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        return True
    except OSError:
        return False


def test_node_in_broker_url_stopped_mid_play_the_next_url_answers(cluster, nodes, ansible, tmp_path):
    a, b, c = nodes
    declare_quorum(a, 'qq')
    ids = send(b, 'qq', [ADD, MAIL] * 5)
    classic = publish(c.url, ADD, 'onc', args=(1, 1), count=4)   # a classic queue on C
    close_publishers()
    url = '%s;%s' % (a.url, b.url)
    mgmt = management_urls(nodes)
    stopped, go = str(tmp_path / 'first-done'), str(tmp_path / 'a-stopped')
    tasks = [
        info(broker_url=url, management_url=mgmt, queues=['qq', 'onc']),
        {'ansible.builtin.file': dict(path=stopped, state='touch')},
        {'ansible.builtin.wait_for': dict(path=go, timeout=180)},
        info(broker_url=url, management_url=mgmt, queues=['qq', 'onc']),
        info(broker_url=url, management_url=mgmt),
    ]
    results = []
    play = threading.Thread(target=lambda: results.extend(ansible.play(tasks)), daemon=True)
    play.start()
    try:
        wait_for(lambda: os.path.exists(stopped) or not play.is_alive(), 120, 'the first task')
        cluster.stop_node(a)
    finally:
        open(go, 'w').close()
        play.join(300)
    try:
        before, _touched, _waited, after, discovered = results
        for result in (before, after, discovered):
            assert not result.get('failed') and not result.get('management_error'), result
        assert before['broker']['port'] == a.port and after['broker']['port'] == b.port, (before, after)
        for result in (before, after):
            queues = dict((q['name'], q) for q in result['queues'])
            assert (queues['qq']['messages'], queues['qq']['type']) == (10, 'quorum'), queues
            assert (queues['onc']['messages'], queues['onc']['type']) == (4, 'classic'), queues
        members = sorted(node.node for node in nodes)
        assert sorted(dict((q['name'], q) for q in before['queues'])['qq']['online']) == members
        moved = dict((q['name'], q) for q in after['queues'])['qq']
        assert sorted(moved['members']) == members and sorted(moved['online']) == sorted([b.node, c.node]), moved
        assert moved['leader'] in (b.node, c.node), moved
        assert sorted(q['name'] for q in discovered['queues']) == ['onc', 'qq'], discovered
    finally:
        cluster.start_node(a)
    assert drain(a, 'qq') == ids and drain(a, 'onc') == classic


def test_workers_on_another_node_than_the_module(nodes, ansible, workers, tmp_path, monkeypatch):
    a, b, c = nodes
    monkeypatch.setenv('FLEET_RECORD_FILE', str(tmp_path / 'ran.txt'))   # the workers' environment comes from ours
    workers.start(c.url, 'onc1@fleet', ['cwork'])
    workers.start(c.url, 'onc2@fleet', ['cwork', 'other'])
    submitted = publish(a.url, 'fleet_tasks.record', 'cwork', args=(0,), count=5)   # through A, run by C's workers
    wait_for(lambda: sorted(recorded(str(tmp_path / 'ran.txt'))) == sorted(submitted), 60, 'the workers to run them')
    names = ['onc1@fleet', 'onc2@fleet']
    mgmt = management_urls(nodes)
    described, drained, after, again = ansible.play([
        {'celeryops.fleet.celery_worker_info': dict(broker_url=a.url, expected_nodes=names,
                                                    include=['ping', 'stats', 'active_queues'], timeout=20)},
        {'celeryops.fleet.celery_worker': dict(broker_url=a.url, nodes=names, state='drained', wait_timeout=60)},
        {'celeryops.fleet.celery_worker_info': dict(broker_url=a.url, expected_nodes=names, include=['ping', 'active_queues'])},
        {'celeryops.fleet.celery_worker': dict(broker_url=a.url, nodes=names, state='drained')},
    ])
    assert not described.get('failed'), described
    assert described['online'] == names and described['missing'] == [], described
    assert described['broker']['port'] == a.port
    assert [described['workers'][name]['ping'] for name in names] == [{'ok': 'pong'}] * 2
    assert described['workers']['onc2@fleet']['queues'] == ['cwork', 'other']
    assert not drained.get('failed') and drained['changed'] is True, drained
    assert drained['nodes']['onc2@fleet']['actions'] == ['cancel_consumer cwork', 'cancel_consumer other']
    assert [drained['nodes'][name]['after']['queues'] for name in names] == [[], []]
    assert after['online'] == names and [after['workers'][name]['queues'] for name in names] == [[], []], after
    assert again['changed'] is False, again
    # Drained: what comes now waits in the queue on C, seen through A.
    waiting = publish(a.url, 'fleet_tasks.record', 'cwork', args=(0,), count=3)
    [counted] = ansible.play([info(broker_url=a.url, management_url=mgmt, queues=['cwork'])])
    assert counted['queues'][0]['messages'] == 3 and counted['queues'][0]['consumers'] == 0, counted
    assert sorted(drain(a, 'cwork')) == sorted(waiting)
    assert sorted(recorded(str(tmp_path / 'ran.txt'))) == sorted(submitted)


def test_quorum_queue_keeps_every_message_when_its_leader_stops(cluster, nodes, ansible):
    a, b, c = nodes
    declare_quorum(b, 'qq')
    ids = send(a, 'qq', [ADD, MAIL] * 25)
    mgmt = management_urls(nodes)
    [before] = ansible.play([info(broker_url=a.url, management_url=mgmt, queues=['qq'])])
    assert before['queues'][0]['leader'] == b.node and before['queues'][0]['messages'] == 50, before
    cluster.stop_node(b)
    try:
        # The other two elect a leader; the management API says so a moment after.
        wait_for(lambda: record(a, 'qq').get('leader') in (a.node, c.node), 60, 'a new leader')
        more = send(c, 'qq', [ADD] * 5)   # the queue takes messages with two members of three
        [after] = ansible.play([info(broker_url=a.url, management_url=mgmt, queues=['qq'])])
        assert not after.get('failed') and not after.get('management_error'), after
        queue = after['queues'][0]
        assert queue['leader'] in (a.node, c.node) and queue['leader'] == record(c, 'qq')['leader'], queue
        assert sorted(queue['online']) == sorted([a.node, c.node]), queue
        assert sorted(queue['members']) == sorted(node.node for node in nodes), queue
        assert queue['messages'] == 55, queue
    finally:
        cluster.start_node(b)
    assert drain(b, 'qq') == ids + more


def test_drain_waiting_when_its_node_stops_goes_on_through_the_next_url(cluster, nodes, ansible, workers, tmp_path, monkeypatch):
    """The node the module is connected to (the first of broker_url) stops while celery_worker waits for a drained
    worker's task: the module reconnects to the next URL and finishes the drain; the task runs once."""
    a, b, c = nodes
    ran = str(tmp_path / 'ran.txt')
    monkeypatch.setenv('FLEET_RECORD_FILE', ran)
    worker = workers.start(c.url, 'slow@fleet', ['cwork'], concurrency=1, prefetch=1)
    [slow] = publish(a.url, 'fleet_tasks.record', 'cwork', args=(30,))
    close_publishers()
    wait_for(lambda: 'fleet_tasks.record[%s] received' % slow in worker.log(), 60, 'the worker to take the task')
    results = []
    drain_task = {'celeryops.fleet.celery_worker': dict(
        broker_url='%s;%s' % (a.url, b.url), nodes=['slow@fleet'], state='drained', wait_timeout=120, wait_sleep=0.5)}
    play = threading.Thread(target=lambda: results.extend(ansible.play([drain_task])), daemon=True)
    play.start()
    try:
        # The worker cancelled its consumer: the module is waiting for the task it holds.
        wait_for(lambda: record(c, 'cwork').get('consumers') == 0 or not play.is_alive(), 60, 'the consumer to be cancelled')
        assert play.is_alive() and recorded(ran) == [], 'the drain ended before the node was stopped: %s' % results
        cluster.stop_node(a)
        play.join(300)
        [drained] = results
        assert not drained.get('failed'), drained
        assert drained['broker']['port'] == b.port, drained['broker']
        assert drained['nodes']['slow@fleet']['actions'] == ['cancel_consumer cwork']
        assert drained['nodes']['slow@fleet']['after'] == dict(queues=[], active=0, reserved=0, concurrency=1,
                                                               autoscale=None), drained
        assert recorded(ran) == [slow]
    finally:
        cluster.start_node(a)


def test_broker_info_names_the_node_in_alarm_though_the_module_asks_another(cluster, nodes, ansible):
    """celery_broker_info's memory_alarm and disk_alarm, made real on B (its watermark and free-disk limit set past
    what it has), seen through A and the cluster's management API; cleared after."""
    a, b, c = nodes

    def alarms():
        return dict((node['name'], (node.get('mem_alarm'), node.get('disk_free_alarm')))
                    for node in api(a, 'GET', '/api/nodes?columns=name,mem_alarm,disk_free_alarm'))
    b.memory_alarm(True)
    b.ctl('set_disk_free_limit', '100000GB')
    try:
        wait_for(lambda: alarms().get(b.node) == (True, True), 60, 'the memory and disk alarms on B')
        result = ansible.module('celery_broker_info', dict(broker_url=a.url, management_url=management_urls(nodes),
                                                           timeout=0.5))
    finally:
        b.memory_alarm(False)
        b.ctl('set_disk_free_limit', '50MB')
        wait_for(lambda: alarms().get(b.node) == (False, False), 60, 'the alarms on B to clear')
    assert not result.get('failed'), result.get('msg')
    found = sorted((f['kind'], f['name']) for f in result['findings'] if f['kind'] in ('memory_alarm', 'disk_alarm'))
    assert found == [('disk_alarm', b.node), ('memory_alarm', b.node)], result['findings']
    assert result['summary']['memory_alarm'] == 1 and result['summary']['disk_alarm'] == 1
    # The alarm blocks every publisher of the cluster, the module's broadcast too: said, not a failure.
    assert 'blocked the connection' in result['broadcast_error'] and result['nodes'] == [], result
