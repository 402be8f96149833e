"""Real TLS: a private Redis that listens on a TLS port only, a private RabbitMQ with an AMQPS
listener, and a CA of the test's own (private_brokers.make_tls) plus an unrelated "wrong" CA.

Verification is on unless a task turns it off explicitly; a wrong CA, a TLS URL at a plaintext
port and a plaintext URL at a TLS port each fail with a message that says what to fix, within the
connect timeout, and never fall back to plaintext. The brokers have passwords of their own, which
never show in the output.
"""

import uuid

import pytest

from harness import publish
from test_secrets import assert_clean, secrets_of


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic

PASSWORD = 'tls-pw-' + uuid.uuid4().hex
ADD = 'fleet_tasks.add'
TIMEOUT = 3


@pytest.fixture
def tls(private):
    return private.tls()


def check_failures(ansible, results, expected):
    """Every failing case failed with its expected texts, fast, without a traceback or the password."""
    assert_clean(ansible.last['stdout'] + ansible.last['stderr'], secrets_of(PASSWORD), 'the output')
    seconds = ansible.task_seconds()
    for index, texts in expected.items():
        result = results[index]
        assert result.get('failed'), (index, result)
        assert 'Traceback' not in result['msg'], result['msg']
        for text in texts:
            assert text in result['msg'], (index, text, result['msg'])
        if 'certificate verification failed' in texts and 'option' in result:  # the lookup has no 'option'
            assert result['option'] == 'tls_ca_file', result
        # The connect timeout, plus the module's start-up on a loaded machine.
        assert seconds[index] < TIMEOUT + 10, (index, seconds[index], result['msg'])


def check_playbook_tls(ansible, url, tls):
    """The fleet playbooks take the same settings (celery_broker_tls_*, celery_broker_password) as
    the modules' defaults: queue_report verifies with the CA, fails with the wrong one."""
    settings = {'celery_broker_url': url, 'celery_broker_password': PASSWORD, 'celery_broker_tls_ca_file': tls['ca'],
                'queue_report_queues': ['tls_q']}
    described = ansible.playbook('queue_report', settings)['Describe the queues']
    assert ansible.last['rc'] == 0 and described['queues'][0]['messages'] == 3, described
    assert described['broker']['tls'] is True, described
    failed = ansible.playbook('queue_report', dict(settings, celery_broker_tls_ca_file=tls['wrong_ca']))
    assert ansible.last['rc'] != 0
    assert 'certificate verification failed' in failed['Describe the queues']['msg'], failed
    assert_clean(ansible.last['stdout'] + ansible.last['stderr'], secrets_of(PASSWORD), 'the playbook output')


@pytest.mark.mitogen
def test_redis_over_tls_verified_and_every_failure_clear(private, tls, workers, ansible, redis_env):
    redis = private.redis(tls=tls)
    client = redis.client()
    client.config_set('requirepass', PASSWORD)  # this connection stays authenticated
    base = 'rediss://:%s@127.0.0.1:%d/0' % (PASSWORD, redis.port)
    # How Celery (kombu, redis-py) is told to verify, in the URL.
    celery_url = base + '?ssl_cert_reqs=required&ssl_ca_certs=' + tls['ca']
    ids = publish(celery_url, ADD, 'tls_q', args=(1, 2), count=3)
    worker = workers.start(celery_url, 'tls1@test', ['tls_other'], events=True, heartbeat_interval=1)
    verified = dict(broker_url=base, tls_ca_file=tls['ca'], connect_timeout=TIMEOUT)
    plain = redis_env.url.replace('redis://', 'rediss://:%s@' % PASSWORD)  # the shared Redis speaks no TLS
    cases = [
        ('celery_queue_info', dict(verified, queues=['tls_q'], peek=1)),
        ('celery_queue_info', dict(broker_url=celery_url, queues=['tls_q'], connect_timeout=TIMEOUT)),
        ('celery_queue_info', dict(verified, queues=['tls_q'], tls_cert_file=tls['client_cert'],
                                   tls_key_file=tls['client_key'])),
        ('celery_queue', dict(verified, queues=['tls_q'])),
        ('celery_worker_info', dict(verified, expected_nodes=['tls1@test'], include=['ping', 'stats'], timeout=10)),
        ('celery_worker', dict(verified, nodes=['tls1@test'], state='consuming', queues=['tls_more'])),
        ('celery_events_info', dict(verified, duration=2.5)),
        # Verification off, asked for explicitly: the wrong CA does not matter.
        ('celery_queue_info', dict(verified, queues=['tls_q'], tls_ca_file=tls['wrong_ca'], tls_verify=False)),
        ('celery_queue_info', dict(broker_url=base + '?ssl_cert_reqs=none', queues=['tls_q'], connect_timeout=TIMEOUT)),
        # Failures: 9 to 15.
        ('celery_queue_info', dict(verified, queues=['tls_q'], tls_ca_file=tls['wrong_ca'])),
        ('celery_queue_info', dict(broker_url=base, queues=['tls_q'], connect_timeout=TIMEOUT)),
        ('celery_worker_info', dict(verified, tls_ca_file=tls['wrong_ca'], include=['ping'])),
        ('celery_queue_info', dict(broker_url=base.replace('rediss://', 'redis://'), connect_timeout=TIMEOUT)),
        ('celery_queue', dict(broker_url=plain, queues=['tls_q'], connect_timeout=TIMEOUT)),
        ('celery_queue_info', dict(broker_url=plain, connect_timeout=TIMEOUT, tls_ca_file=tls['ca'])),
        ('celery_queue_info', dict(verified, tls_ca_file=tls['server_key'])),
        ('celery_queue_info', dict(verified, tls_cert_file=tls['client_cert'])),
    ]
    tasks = [{'celeryops.fleet.' + module: args} for module, args in cases]
    # The lookup shares the options: the same CA verifies, the wrong one fails.
    tasks += [{'ansible.builtin.debug': {'msg': "{{ query('celeryops.fleet.queue_depth', 'tls_q', broker_url=url, "
                                                "tls_ca_file='%s') }}" % ca}} for ca in (tls['ca'], tls['wrong_ca'])]
    results = ansible.play(tasks, check=True, play_extra={'vars': {'url': base}})
    for index in range(9):
        assert not results[index].get('failed'), (index, results[index])
    first, from_query, client_cert, purge, info, consuming, events, unverified, none_in_query = results[:9]
    assert first['queues'][0]['messages'] == 3 and first['queues'][0]['peek'][0]['id'] == ids[0], first
    assert first['broker']['tls'] is True
    for result in (from_query, client_cert, unverified, none_in_query):
        assert result['queues'][0]['messages'] == 3, result
    assert purge['changed'] is True and purge['queues'][0]['removed'] == 3, purge  # check mode: nothing went
    assert info['online'] == ['tls1@test'] and info['missing'] == [], info
    assert info['workers']['tls1@test']['stats']['broker']['transport'] == 'rediss', info
    assert consuming['changed'] is True, consuming
    assert events['events'] > 0 and 'tls1@test' in events['workers'], events  # heartbeats, over TLS
    assert client.llen('tls_q') == 3
    verify_failed = ['certificate verification failed', 'tls_ca_file']
    check_failures(ansible, results, {
        9: verify_failed, 10: verify_failed, 11: verify_failed,
        12: ['redis 127.0.0.1:%d' % redis.port, 'rediss://'],
        13: ['rediss 127.0.0.1:6379', 'does the port speak TLS?'],
        14: ['does the port speak TLS?'],
        15: ['tls_ca_file: cannot load %s' % tls['server_key']],
        16: ['tls_cert_file: cannot load the client certificate %s' % tls['client_cert'], 'tls_key_file'],
        18: ['queue_depth', 'certificate verification failed', 'tls_ca_file'],
    })
    assert results[17]['msg'] == [3], results[17]
    assert worker.process.poll() is None
    check_playbook_tls(ansible, 'rediss://127.0.0.1:%d/0' % redis.port, tls)


@pytest.mark.mitogen
def test_rabbitmq_over_amqps_verified_and_every_failure_clear(private, tls, workers, ansible):
    rabbit = private.rabbit(tls=tls)
    user = 'tls-user'
    rabbit.ctl('add_user', user, PASSWORD)
    rabbit.ctl('set_permissions', '-p', '/', user, '.*', '.*', '.*')
    plain_url = 'amqp://%s:%s@127.0.0.1:%d/%%2F' % (user, PASSWORD, rabbit.port)
    base = 'amqps://%s:%s@127.0.0.1:%d/%%2F' % (user, PASSWORD, rabbit.tls_port)
    ids = publish(plain_url, ADD, 'tls_q', args=(1, 2), count=3)
    workers.start(plain_url, 'tlsr@test', ['tls_other'])
    verified = dict(broker_url=base, tls_ca_file=tls['ca'], connect_timeout=TIMEOUT)
    cases = [
        ('celery_queue_info', dict(verified, queues=['tls_q'], peek=1)),
        ('celery_queue_info', dict(verified, queues=['tls_q'], tls_cert_file=tls['client_cert'],
                                   tls_key_file=tls['client_key'])),
        ('celery_queue', dict(verified, queues=['tls_q'])),
        ('celery_worker_info', dict(verified, expected_nodes=['tlsr@test'], include=['ping'], timeout=10)),
        ('celery_queue_info', dict(verified, queues=['tls_q'], tls_ca_file=tls['wrong_ca'], tls_verify=False)),
        ('celery_queue_info', dict(broker_url=base + '?ssl_cert_reqs=none', queues=['tls_q'], connect_timeout=TIMEOUT)),
        # Failures.
        ('celery_queue_info', dict(verified, queues=['tls_q'], tls_ca_file=tls['wrong_ca'])),
        ('celery_queue_info', dict(broker_url=base, queues=['tls_q'], connect_timeout=TIMEOUT)),
        ('celery_queue_info', dict(broker_url=plain_url.replace('amqp://', 'amqps://'), queues=['tls_q'],
                                   tls_ca_file=tls['ca'], connect_timeout=TIMEOUT)),
        ('celery_queue', dict(broker_url=base.replace('amqps://', 'amqp://'), queues=['tls_q'],
                              connect_timeout=TIMEOUT)),
    ]
    results = ansible.play([{'celeryops.fleet.' + module: args} for module, args in cases], check=True)
    for index in range(6):
        assert not results[index].get('failed'), (index, results[index])
    first, client_cert, purge, info, unverified, none_in_query = results[:6]
    assert first['queues'][0]['messages'] == 3 and first['queues'][0]['peek'][0]['id'] == ids[0], first
    assert first['broker']['tls'] is True
    for result in (client_cert, unverified, none_in_query):
        assert result['queues'][0]['messages'] == 3, result
    assert purge['changed'] is True and purge['queues'][0]['removed'] == 3, purge
    assert info['online'] == ['tlsr@test'], info
    verify_failed = ['certificate verification failed', 'tls_ca_file']
    check_failures(ansible, results, {
        6: verify_failed, 7: verify_failed,
        8: ['amqps 127.0.0.1:%d' % rabbit.port, 'does the port speak TLS?'],
        9: ['amqp 127.0.0.1:%d' % rabbit.tls_port, 'amqps://'],
    })
    check_playbook_tls(ansible, 'amqps://%s@127.0.0.1:%d/%%2F' % (user, rabbit.tls_port), tls)
