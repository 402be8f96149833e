import collections
import os
import urllib.parse
import uuid

import pytest

from harness import (Ansible, RabbitBroker, RedisBroker, close_publishers, management, management_up, redis_up,
                     require, worker_index)

BrokerUser = collections.namedtuple('BrokerUser', 'name password url')


def pytest_configure(config):
    config.addinivalue_line('markers', 'mitogen: also run under Mitogen for Ansible (strategy mitogen_linear): at least '
                                       'one test per module, plugin, playbook and role, the time limits, TLS and secrets')
    config.addinivalue_line('markers', "module_logic: proves a module's own work on the brokers and workers (decoding, "
                                       'counting, purging, faults, TLS), which no ansible-core version changes: the '
                                       'oldest ansible-core (scripts/test integration-2.16) runs only the `mitogen` '
                                       'tests among these, at least one per module; everything Ansible itself takes '
                                       'part in (roles, playbooks, plugins, option checks, no_log, the SSH fleet) runs '
                                       'on both')
    config.addinivalue_line('markers', 'celery_matrix: workers of every Celery 5.x (test_celery_matrix.py), the step '
                                       'celery-matrix of scripts/test; the other integration steps leave them out')


@pytest.fixture(scope='session')
def redis_broker():
    require(redis_up(), 'Redis at 127.0.0.1:6379')
    # CELERYOPS_TEST_REDIS_DB moves the range so that two checkouts can test side by side.
    return RedisBroker(db=int(os.environ.get('CELERYOPS_TEST_REDIS_DB', '8')) + worker_index())


@pytest.fixture
def redis_env(redis_broker):
    """A Redis database of this test's own, empty at the start."""
    redis_broker.client.flushdb()
    yield redis_broker
    redis_broker.client.flushdb()


@pytest.fixture(scope='session')
def rabbit_broker():
    require(management_up(), 'RabbitMQ (management API at 127.0.0.1:15672)')
    broker = RabbitBroker('celeryops-test-%d-%d' % (worker_index(), os.getpid()))
    broker.create()
    yield broker
    broker.delete()


@pytest.fixture
def rabbit_env(rabbit_broker):
    """A RabbitMQ vhost of this session's own, with no queues at the start."""
    rabbit_broker.reset()
    yield rabbit_broker
    # kombu's pooled connections remember the queues they declared and the next test deletes
    # every queue: a reused connection would publish into the void.
    close_publishers()


@pytest.fixture
def redis_user(redis_env):
    """A Redis ACL user of this test's own with a unique password (the default user accepts any password);
    ``url`` reaches the test's database as that user."""
    name = 'fleet-test-%s' % uuid.uuid4().hex[:8]
    password = 'redis-pw-%s' % uuid.uuid4().hex
    redis_env.client.acl_setuser(name, enabled=True, passwords=['+' + password], keys=['*'], channels=['*'],
                                 commands=['+@all'])
    url = redis_env.url.replace('redis://', 'redis://%s:%s@' % (name, password))
    yield BrokerUser(name, password, url)
    close_publishers()
    redis_env.client.acl_deluser(name)


@pytest.fixture
def rabbit_user(rabbit_env):
    """A RabbitMQ user of this test's own with a unique password, allowed on the test's vhost only."""
    name = 'fleet-test-%s' % uuid.uuid4().hex[:8]
    password = 'rabbit-pw-%s' % uuid.uuid4().hex
    management('PUT', '/api/users/%s' % name, {'password': password, 'tags': ''})
    management('PUT', '/api/permissions/%s/%s' % (rabbit_env.qvhost, name), {'configure': '.*', 'write': '.*', 'read': '.*'})
    url = rabbit_env.url.replace('guest:guest@', '%s:%s@' % (name, urllib.parse.quote(password)))
    yield BrokerUser(name, password, url)
    close_publishers()
    management('DELETE', '/api/users/%s' % name)


@pytest.fixture
def ansible(tmp_path):
    return Ansible(str(tmp_path))


@pytest.fixture
def workers(tmp_path):
    """Start real Celery workers with workers.start(...); all are stopped at the end."""
    from harness import Worker
    started = []

    class Workers(object):
        def start(self, url, name, queues, ready=True, **kwargs):
            worker = Worker(url, name, queues, logdir=str(tmp_path), **kwargs)
            started.append(worker)
            return worker.wait_ready() if ready else worker

    yield Workers()
    for worker in started:
        worker.kill()


@pytest.fixture
def private(tmp_path):
    """Brokers of this test's own (private_brokers.py): private.redis(), private.rabbit(),
    private.proxy(port), private.tls(); for faults and TLS, never on the shared brokers."""
    import private_brokers
    made = []

    class Private(object):
        def tls(self):
            return private_brokers.make_tls(str(tmp_path / 'tls'))

        def redis(self, tls=None, **options):
            made.append(private_brokers.PrivateRedis(str(tmp_path / ('redis-%d' % len(made))), tls=tls, **options))
            return made[-1].start()

        def rabbit(self, tls=None):
            made.append(private_brokers.PrivateRabbit(str(tmp_path / ('rabbit-%d' % len(made))), tls=tls))
            return made[-1].start()

        def proxy(self, target_port):
            made.append(private_brokers.StallingProxy(target_port))
            return made[-1]

    yield Private()
    for thing in reversed(made):
        (getattr(thing, 'cleanup', None) or getattr(thing, 'close', None) or thing.stop)()
