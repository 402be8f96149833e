"""health_check_prometheus_file and queue_report_prometheus_file: the playbooks, run as an operator runs them against
real workers on Redis and RabbitMQ, write the facts they gathered for node_exporter's textfile collector. The file is
read with the official Prometheus parser and checked against the facts the playbook reports (issue 19)."""

import os
import time
import urllib.parse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import management, publish, wait_for

# A double quote, a backslash and a line feed (Redis keeps any name; RabbitMQ drops a line feed from a queue name, so
# there the name has a double quote and a backslash, and the line feed is in HOSTILE_NODE).
HOSTILE_QUEUE = 'prom "q\\ueue"\nx'
HOSTILE_NODE = 'gone"\\\n@fleet'


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def metrics(path):
    """{family: {frozenset(labels): value}} as Prometheus reads the file, with every family's type."""
    with open(path) as handle:
        text = handle.read()
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            assert sample.timestamp is None, sample  # the textfile collector refuses samples with timestamps
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    assert set(types.values()) == {'gauge'}, types
    return text, samples


def series(samples, family, source, **labels):
    return samples.get(family, {}).get(frozenset(dict(labels, source=source).items()))


def by_label(samples, family, label):
    """label value -> sample value, for every series of a family."""
    return dict((dict(key)[label], value) for key, value in samples.get(family, {}).items())


def failures(tasks):
    return [(name, result.get('msg')) for name, result in tasks.items() if result.get('failed')]


def only_the_file(path):
    """Nothing else is left in the directory (no temporary file for the collector to read)."""
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]


def hostile_queue(url):
    return HOSTILE_QUEUE if url.startswith('redis') else HOSTILE_QUEUE.replace('\n', ' ')


def worker_counts(ansible, url, node):
    info = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=[node], include=['active', 'reserved']))
    reply = info['workers'].get(node, {})
    return len(reply.get('active', [])), len(reply.get('reserved', []))


def test_health_check_writes_the_facts_it_gathered_and_a_second_run_only_what_is_left(broker, ansible, workers, tmp_path):
    url = broker.url
    hostile = hostile_queue(url)
    # One task running and two prefetched behind it on prom-a, which also consumes the hostile queue.
    workers.start(url, 'prom-a@fleet', ['prom_work', hostile], concurrency=1, prefetch=4)
    other = workers.start(url, 'prom-b@fleet', ['prom_other'])
    publish(url, 'fleet_tasks.sleep', 'prom_work', args=(60,), count=3)
    wait_for(lambda: worker_counts(ansible, url, 'prom-a@fleet') == (1, 2), timeout=60, what='1 active and 2 reserved on prom-a')
    publish(url, 'fleet_tasks.add', 'prom_idle', args=(1, 2), count=3)  # no consumer
    path = str(tmp_path / 'textfile' / 'celery_health.prom')
    os.mkdir(os.path.dirname(path))
    fleet = dict(celery_fleet_hosts='localhost', celery_broker_url=url, health_check_prometheus_file=path)

    before = time.time()
    tasks = ansible.playbook('health_check', dict(fleet, celery_expected_nodes=['prom-a@fleet', 'prom-b@fleet', HOSTILE_NODE],
                                                  health_check_queues=['prom_idle']))
    after = time.time()
    assert ansible.last['rc'] != 0  # HOSTILE_NODE does not answer
    text, samples = metrics(path)
    only_the_file(path)

    # The queues: what the playbook read, and what was published.
    queues = tasks['Read the queues']['queues']
    assert sorted(q['name'] for q in queues) == sorted(['prom_work', hostile, 'prom_other', 'prom_idle'])
    assert by_label(samples, 'celery_queue_messages_ready', 'queue') == dict((q['name'], q['messages']) for q in queues)
    assert by_label(samples, 'celery_queue_messages_unacked', 'queue') == dict(
        (q['name'], q['unacked']) for q in queues if q['unacked'] is not None)
    assert by_label(samples, 'celery_queue_consumers', 'queue') == dict(
        (q['name'], q['consumers']) for q in queues if q['consumers'] is not None)
    assert series(samples, 'celery_queue_messages_ready', 'health_check', queue='prom_idle') == 3
    # The hostile name is read back as it is, and made no line of its own.
    assert hostile in by_label(samples, 'celery_queue_messages_ready', 'queue')
    assert not any(line.startswith(('x', 'prom')) for line in text.splitlines())
    if 'redis' in url:
        assert by_label(samples, 'celery_queue_consumers', 'queue') == {}  # Redis cannot count them: no series, not 0
    else:
        assert series(samples, 'celery_queue_consumers', 'health_check', queue='prom_idle') == 0

    # The workers: what celery_worker_info answered.
    answered = tasks['Ask every worker of the fleet at once']
    assert answered['missing'] == [HOSTILE_NODE]
    assert by_label(samples, 'celery_worker_up', 'node') == {'prom-a@fleet': 1, 'prom-b@fleet': 1, HOSTILE_NODE: 0}
    assert by_label(samples, 'celery_worker_active_tasks', 'node') == dict(
        (node, len(reply['active'])) for node, reply in answered['workers'].items())
    assert by_label(samples, 'celery_worker_reserved_tasks', 'node') == dict(
        (node, len(reply['reserved'])) for node, reply in answered['workers'].items())
    assert series(samples, 'celery_worker_active_tasks', 'health_check', node='prom-a@fleet') == 1
    assert series(samples, 'celery_worker_reserved_tasks', 'health_check', node='prom-a@fleet') == 2

    assert series(samples, 'celery_fleet_healthy', 'health_check') == 0
    assert before - 1 <= series(samples, 'celery_check_timestamp_seconds', 'health_check') <= after

    # prom-b, its queue, the node that never answered and prom_idle are gone: no series is left for them.
    other.kill()
    tasks = ansible.playbook('health_check', dict(fleet, celery_expected_nodes=['prom-a@fleet']))
    assert ansible.last['rc'] == 0, (tasks.get('Fail naming what is unhealthy'), ansible.last['stdout'][-2000:])
    text, samples = metrics(path)
    only_the_file(path)
    assert by_label(samples, 'celery_worker_up', 'node') == {'prom-a@fleet': 1}
    assert sorted(by_label(samples, 'celery_queue_messages_ready', 'queue')) == sorted(['prom_work', hostile])
    assert 'prom-b' not in text and 'prom_other' not in text and 'prom_idle' not in text and 'gone' not in text
    assert series(samples, 'celery_fleet_healthy', 'health_check') == 1


def test_health_check_of_an_unreachable_broker_writes_unhealthy_and_no_password(ansible, tmp_path):
    path = str(tmp_path / 'celery_health.prom')
    before = time.time()
    ansible.playbook('health_check', dict(celery_fleet_hosts='localhost', celery_expected_nodes=['a@fleet'],
                                          celery_broker_url='redis://:n0t-shown@127.0.0.1:1/0', health_check_prometheus_file=path))
    assert ansible.last['rc'] != 0
    text, samples = metrics(path)
    assert 'n0t-shown' not in text
    assert set(samples) == {'celery_fleet_healthy', 'celery_check_timestamp_seconds'}, text  # nothing was read
    assert series(samples, 'celery_fleet_healthy', 'health_check') == 0
    assert series(samples, 'celery_check_timestamp_seconds', 'health_check') >= before - 1


def delete_queue(broker, name):
    if hasattr(broker, 'client'):  # Redis: the queue's lists (every priority step) and its bindings (kombu 5.7 keeps two)
        keys = list(broker.client.scan_iter(match=name + '*')) + list(broker.client.scan_iter(match='_kombu.binding*.' + name))
        assert len(keys) >= 3, keys
        broker.client.delete(*keys)
    else:
        management('DELETE', '/api/queues/%s/%s' % (broker.qvhost, urllib.parse.quote(name, safe='')))


@pytest.mark.parametrize('transport', ['redis', 'rabbitmq'])
def test_queue_report_writes_the_queues_it_read_and_a_queue_gone_leaves_no_series(transport, request, ansible, tmp_path):
    user = request.getfixturevalue('redis_user' if transport == 'redis' else 'rabbit_user')
    broker = request.getfixturevalue('redis_env' if transport == 'redis' else 'rabbit_env')
    hostile = hostile_queue(user.url)
    if transport == 'rabbitmq':  # the management API counts unacked messages and consumers for a monitoring user
        management('PUT', '/api/users/%s' % user.name, {'password': user.password, 'tags': 'monitoring'})
    publish(user.url, 'fleet_tasks.add', 'prom_q1', args=(1, 2), count=4)
    publish(user.url, 'fleet_tasks.add', 'prom_q2', args=(1, 2), count=1)
    publish(user.url, 'fleet_tasks.mail', 'prom_q2', args=('a@b',), count=1, priority=9)
    publish(user.url, 'fleet_tasks.add', hostile, args=(1, 2), count=2)
    path = str(tmp_path / 'celery_queues.prom')
    report = dict(celery_broker_url=user.url, queue_report_prometheus_file=path)

    before = time.time()
    tasks = ansible.playbook('queue_report', report)
    after = time.time()
    assert ansible.last['rc'] == 0, failures(tasks)
    text, samples = metrics(path)
    assert user.password not in text and urllib.parse.quote(user.password) not in text
    queues = tasks['Describe the queues']['queues']
    assert sorted(q['name'] for q in queues) == sorted(['prom_q1', 'prom_q2', hostile])
    assert by_label(samples, 'celery_queue_messages_ready', 'queue') == {'prom_q1': 4, 'prom_q2': 2, hostile: 2}
    assert by_label(samples, 'celery_queue_messages_ready', 'queue') == dict((q['name'], q['messages']) for q in queues)
    assert by_label(samples, 'celery_queue_messages_unacked', 'queue') == dict(
        (q['name'], q['unacked']) for q in queues if q['unacked'] is not None)
    assert by_label(samples, 'celery_queue_consumers', 'queue') == dict(
        (q['name'], q['consumers']) for q in queues if q['consumers'] is not None)
    priorities = dict(((dict(key)['queue'], dict(key)['priority']), value)
                      for key, value in samples.get('celery_queue_priority_messages_ready', {}).items())
    assert priorities == dict(((q['name'], step), count) for q in queues for step, count in (q['priorities'] or {}).items())
    if transport == 'redis':  # prom_q2 has a message on step 9: its map is reported, the others' only repeat messages
        assert priorities == {('prom_q2', '0'): 1, ('prom_q2', '3'): 0, ('prom_q2', '6'): 0, ('prom_q2', '9'): 1}
    assert 'celery_fleet_healthy' not in samples and 'celery_worker_up' not in samples  # queue_report asks no worker
    assert before - 1 <= series(samples, 'celery_check_timestamp_seconds', 'queue_report') <= after
    only_the_file(path)

    # prom_q1 is deleted; prom_q2 is over queue_report_max_messages, which fails the run but still writes the file.
    delete_queue(broker, 'prom_q1')
    tasks = ansible.playbook('queue_report', dict(report, queue_report_max_messages=1))
    assert ansible.last['rc'] != 0 and 'prom_q2' in tasks['Describe the queues']['msg']
    text, samples = metrics(path)
    assert by_label(samples, 'celery_queue_messages_ready', 'queue') == {'prom_q2': 2, hostile: 2}
    assert 'prom_q1' not in text
    only_the_file(path)
