"""Bad input gets one clear message naming the option or endpoint: no traceback, no hang, no password."""

import socket
import threading
import uuid

import pytest

SECRET = 'pw-' + uuid.uuid4().hex


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def run_all(ansible, cases):
    """Run (module, args, expected substrings) cases in one playbook; check each failed clearly."""
    tasks = [{'name': 'case %d' % i, 'celeryops.fleet.' + module: args} for i, (module, args, _expected) in enumerate(cases)]
    results = ansible.play(tasks, timeout=120)
    output = ansible.last['stdout'] + ansible.last['stderr']
    assert SECRET not in output
    for (module, args, expected), result in zip(cases, results):
        assert result.get('failed'), (module, args, result)
        msg = result['msg']
        assert 'Traceback' not in msg, msg
        for text in expected:
            assert text in msg, (args, msg)
    return results


def test_bad_options_redis(redis_env, redis_user, ansible, tmp_path):
    url = redis_env.url
    missing_ca = str(tmp_path / 'no-such-ca.pem')
    cases = [
        ('celery_queue_info', dict(broker_url='kafka://127.0.0.1:9092'), ["unsupported scheme 'kafka'"]),
        ('celery_queue_info', dict(broker_url='127.0.0.1:6379'), ['broker_url', "no '://'"]),
        ('celery_queue_info', dict(broker_url='redis://127.0.0.1:1/0'), ['cannot connect to redis 127.0.0.1:1 db 0']),
        ('celery_queue_info', dict(broker_url='redis://%s:%s@127.0.0.1:6379/0' % (redis_user.name, SECRET)),
         ['authentication failed at redis 127.0.0.1:6379 db 0']),
        ('celery_queue', dict(broker_url='redis://%s@127.0.0.1:6379/0' % redis_user.name, broker_password=SECRET,
                              queues=['q']),
         ['authentication failed at redis 127.0.0.1:6379 db 0']),
        ('celery_queue_info', dict(broker_url='redis://127.0.0.1:6379/999'),
         ['Redis database 999 does not exist']),
        ('celery_queue_info', dict(broker_url='redis://127.0.0.1:6379/abc'),
         ["broker_url: the Redis database must be a number", "'abc'"]),
        ('celery_queue_info', dict(broker_url='redis://127.0.0.1:99999/0'), ['broker_url', 'port']),
        ('celery_queue_info', dict(broker_url=url, connect_timeout=0), ['connect_timeout must be a positive number']),
        ('celery_queue_info', dict(broker_url=url, connect_timeout=-2), ['connect_timeout must be a positive number']),
        ('celery_queue_info', dict(broker_url=url, wait_timeout=0, wait=True),
         ['wait_timeout must be a positive number']),
        ('celery_queue_info', dict(broker_url=url, peek='many'), ['peek', 'int']),
        ('celery_queue_info', dict(broker_url=url, peek=-1), ['peek must be between 0 and']),
        ('celery_queue_info', dict(broker_url=url, max_messages=-5), ['max_messages must be 0 or more']),
        ('celery_queue_info', dict(broker_url=url, queues=['ok', '']), ['queues: a queue name is empty']),
        ('celery_queue_info', dict(broker_url=url, min_consumers=1), ['min_consumers: Redis cannot count consumers']),
        ('celery_queue_info', dict(broker_url=url, priority_steps=[0, 300]), ['priority_steps must be']),
        ('celery_queue_info', dict(broker_url='rediss://127.0.0.1:6379/0', connect_timeout=2),
         ['rediss 127.0.0.1:6379 db 0', 'does the port speak TLS?']),
        ('celery_queue_info', dict(broker_url='rediss://127.0.0.1:6379/0', tls_ca_file=missing_ca),
         ['tls_ca_file: no such file']),
        ('celery_queue_info', dict(broker_url=url, tls_ca_file=missing_ca),
         ['need a TLS broker URL', 'refusing to connect in plaintext']),
        ('celery_queue', dict(broker_url=url, queues=['q'], keep=3), ['keep only goes with state: trimmed']),
        ('celery_queue', dict(broker_url=url, queues=['q'], state='trimmed'), ['keep is required with state: trimmed']),
        ('celery_queue', dict(broker_url=url, queues=['q'], state='trimmed', keep=-1), ['keep must be 0 or more']),
        ('celery_queue', dict(broker_url=url, queues=['q'], state='trimmed', keep='ten'), ['keep', 'int']),
        ('celery_queue', dict(broker_url=url, queues=[]), ['queues must name at least one queue']),
        ('celery_queue', dict(broker_url=url, queues=['q'], state='gone'), ['state', 'purged, trimmed']),
        ('celery_queue', dict(queues=['q']), ['broker_url is required']),
    ]
    run_all(ansible, cases)


def test_silent_server_fails_within_timeout(silent_server, ansible):
    cases = [
        ('celery_queue_info', dict(broker_url='redis://127.0.0.1:%d/0' % silent_server, connect_timeout=1),
         ['timed out', 'redis 127.0.0.1:%d' % silent_server]),
        ('celery_queue_info', dict(broker_url='amqp://guest:%s@127.0.0.1:%d//' % (SECRET, silent_server),
                                   queues=['q'], connect_timeout=1),
         ['amqp 127.0.0.1:%d' % silent_server]),
        ('celery_queue', dict(broker_url='redis://127.0.0.1:%d/0' % silent_server, queues=['q'], connect_timeout=1),
         ['timed out']),
    ]
    results = run_all(ansible, cases)
    # Three modules, each bounded by its 1 s timeout (plus Ansible's own start-up per task).
    assert ansible.last['seconds'] < 30, ansible.last['seconds']
    assert len(results) == 3
