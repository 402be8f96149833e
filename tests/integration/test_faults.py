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

from harness import publish

SECRET = 'pw-' + uuid.uuid4().hex
MARGIN = 1.0  # "within its timeout plus a second"


def closed_port_url(transport):
    from harness import free_port
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
    (the broker), in less than ``timeout`` + MARGIN beyond what the fast failure took."""
    fast = dict(tasks[0])
    fast['name'] = 'fast failure'
    fast_url = closed_port_url('redis' if 'redis' in expected else 'amqp')
    fast['celeryops.fleet.celery_queue_info'] = dict(fast['celeryops.fleet.celery_queue_info'], broker_url=fast_url)
    results = ansible.play([fast] + tasks, timeout=300)
    durations = ansible.durations()
    baseline = durations[0]
    assert results[0].get('failed'), results[0]
    output = ansible.last['stdout'] + ansible.last['stderr']
    assert SECRET not in output
    for task, result, seconds in zip(tasks, results[1:], durations[1:]):
        print(label, task["name"], round(seconds, 2), result.get("msg"))
        name = task['name']
        assert result.get('failed'), (label, name, result)
        msg = result['msg']
        assert 'Traceback' not in msg, (label, name, msg)
        assert expected in msg, (label, name, msg)
        assert seconds < baseline + timeout + MARGIN, (label, name, seconds, baseline, msg)
    return results


# -- 2. a broker that accepts the connection and never answers ----------------------------

@pytest.mark.parametrize('transport', ['redis', 'amqp'])
def test_stalled_broker_every_module_fails_within_its_timeout(transport, private, ansible):
    if transport == 'redis':
        server = private.redis()
        proxy = private.proxy(server.port)
        url = 'redis://:%s@127.0.0.1:%d/0' % (SECRET, proxy.port)
        server.client().config_set('requirepass', SECRET)
        expected = 'redis 127.0.0.1:%d db 0' % proxy.port
    else:
        server = private.rabbit()
        proxy = private.proxy(server.port)
        url = 'amqp://guest:guest@127.0.0.1:%d/%%2F' % proxy.port
        expected = 'amqp 127.0.0.1:%d vhost /' % proxy.port
    proxy.stall()
    timeout = 2
    results = assert_bounded(ansible, every_module(url, timeout), timeout, expected, 'stalled ' + transport)
    for result in results[1:]:
        assert 'timed out' in result['msg'], result['msg']
