"""Broker passwords and Flower credentials never show: not in stdout or stderr at -vvvv, not in the
returned facts, not in any file written outside the files meant to hold them (which are 0600).

Every module, the inventory plugin, the queue_depth lookup, the decode_message filter, the worker and
flower roles and the four playbooks run with a broker user of the test's own (a Redis ACL user, a
RabbitMQ user allowed on the test's vhost only) and real Celery workers logged in as that user. The
secrets reach Ansible through the environment only (lookup('env')), so any file the test's temporary
directories end up holding that has one was written by what is under test. Error paths are covered
too: malformed URLs with the password in them, a wrong password, an unreachable host, a password
given through broker_password.
"""

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.parse
import uuid

import pytest

from harness import free_port, http_status, management, publish
from test_roles import VENV, Deployment, failure, stats, worker

ADD = 'fleet_tasks.add'
FLOWER_PASSWORD = 'flower-pw-' + uuid.uuid4().hex
WRONG_PASSWORD = 'wrong-pw-' + uuid.uuid4().hex
# A password with an unencoded '/' cuts a URL short: neither half may show.
SLASHED = ('slash-a-' + uuid.uuid4().hex, 'slash-b-' + uuid.uuid4().hex)


def env_var(name):
    return "{{ lookup('ansible.builtin.env', '%s') }}" % name


def secrets_of(*passwords):
    """What would betray a password: itself, percent-encoded, or any 12 characters in a row of its random
    part (a message that cuts a URL short shows a piece of it); and Flower's basic auth header in base64."""
    out = set()
    for password in passwords:
        out.update([password, urllib.parse.quote(password, safe='')])
        random_part = password.rsplit('-', 1)[-1]
        out.update(random_part[i:i + 12] for i in range(len(random_part) - 11))
    out.add(base64.b64encode(('ops:%s' % FLOWER_PASSWORD).encode()).decode().rstrip('='))
    return sorted(out)


def assert_clean(text, secrets, where):
    for secret in secrets:
        assert secret not in text, 'a secret (%s...) shows in %s: ...%s...' % (
            secret[:6], where, text[max(text.find(secret) - 200, 0):text.find(secret)])


def scan(root, secrets, allowed=()):
    """Files below root that hold a secret, except the allowed ones; the allowed ones must be 0600."""
    found = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                with open(path, 'rb') as handle:
                    data = handle.read()
            except OSError:
                continue
            if any(secret.encode() in data for secret in secrets):
                if path in allowed:
                    # Readable by its owner only: the service user (supervisord's here; nobody else runs as it).
                    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and os.stat(path).st_uid == os.getuid(), path
                else:
                    found.append(path)
    return found


@pytest.fixture
def quiet_files(tmp_path, monkeypatch):
    """Ansible's temporary files and its log go below the test's directory, to be scanned."""
    monkeypatch.setenv('ANSIBLE_LOCAL_TEMP', str(tmp_path / 'ansible-local'))
    monkeypatch.setenv('ANSIBLE_REMOTE_TEMP', str(tmp_path / 'ansible-remote'))
    monkeypatch.setenv('ANSIBLE_LOG_PATH', str(tmp_path / 'ansible.log'))
    return tmp_path


def module_tasks(node, queue):
    """Every module and the lookup with the broker user's password: in the URL, or through broker_password."""
    url, user_url = env_var('COF_URL'), env_var('COF_USER_URL')
    password = env_var('COF_PASSWORD')
    return [
        {'celeryops.fleet.celery_queue_info': dict(broker_url=url, queues=[queue], peek=2, breakdown=True)},
        {'celeryops.fleet.celery_queue_info': dict(broker_url=user_url, broker_password=password, queues=[queue])},
        {'celeryops.fleet.celery_queue': dict(broker_url=url, queues=[queue + '_purge'])},
        {'celeryops.fleet.celery_worker_info': dict(broker_url=url, expected_nodes=[node], timeout=10,
                                                    include=['ping', 'stats', 'conf', 'active_queues', 'registered'])},
        {'celeryops.fleet.celery_worker': dict(broker_url=url, nodes=[node], state='consuming',
                                               queues=[queue + '_more'])},
        {'celeryops.fleet.celery_events_info': dict(broker_url=user_url, broker_password=password, duration=3)},
        {'ansible.builtin.debug': {'msg': "{{ query('celeryops.fleet.queue_depth', '%s', broker_url=lookup("
                                          "'ansible.builtin.env', 'COF_URL')) }}" % queue}},
        {'ansible.builtin.debug': {'msg': "{{ query('celeryops.fleet.queue_depth', '%s', broker_url=lookup("
                                          "'ansible.builtin.env', 'COF_USER_URL'), broker_password=lookup("
                                          "'ansible.builtin.env', 'COF_PASSWORD')) }}" % queue}},
    ]


def error_tasks(scheme, user, port, path):
    """Bad input that holds a password: each must fail naming the fault, without the password."""
    wrong = '%s://%s:%s@127.0.0.1:%d/%s' % (scheme, user, env_var('COF_WRONG'), port, path)
    user_url = '%s://%s@127.0.0.1:%d/%s' % (scheme, user, port, path)
    cases = [
        (dict(broker_url=wrong), ['authentication failed', '127.0.0.1:%d' % port]),
        (dict(broker_url=user_url, broker_password=env_var('COF_WRONG')), ['authentication failed']),
        (dict(broker_url='%s://%s:%s@127.0.0.1:1/%s' % (scheme, user, env_var('COF_PASSWORD'), path)),
         ['cannot connect to %s 127.0.0.1:1' % scheme]),
        (dict(broker_url='%s://%s:%s@no-such-host.invalid:%d/%s' % (scheme, user, env_var('COF_PASSWORD'), port, path),
              connect_timeout=3), ['no-such-host.invalid']),
        (dict(broker_url='%s://%s:%s/%s@127.0.0.1:%d/%s'
              % (scheme, user, env_var('COF_SLASH_A'), env_var('COF_SLASH_B'), port, path)),
         ['broker_url', 'percent-encode']),
        (dict(broker_url='%s://%s:%s@127.0.0.1:%d:%d/%s' % (scheme, user, env_var('COF_PASSWORD'), port, port, path)),
         ['broker_url', 'port']),
        (dict(broker_url='%s:%s@127.0.0.1:%d' % (user, env_var('COF_PASSWORD'), port)), ['broker_url', "no '://'"]),
        (dict(broker_url='%s:%s@127.0.0.1://x' % (user, env_var('COF_PASSWORD'))), ['not a URL scheme']),
        (dict(broker_url='%s://%s:%s@[::1/%s' % (scheme, user, env_var('COF_PASSWORD'), path)),
         ['broker_url', 'malformed']),
        (dict(broker_url='kafka://%s:%s@127.0.0.1:%d' % (user, env_var('COF_PASSWORD'), port)), ["scheme 'kafka'"]),
    ]
    if scheme == 'redis':
        cases.append((dict(broker_url='redis://%s:%s@127.0.0.1:%d/x%s' % (user, env_var('COF_PASSWORD'), port, path)),
                      ['the Redis database must be a number']))
    return cases


def check_run(ansible, secrets, where):
    assert_clean(ansible.last['stdout'], secrets, where + ' stdout')
    assert_clean(ansible.last['stderr'], secrets, where + ' stderr')


@pytest.mark.parametrize('kind', ['redis', 'rabbitmq'])
@pytest.mark.mitogen
def test_modules_lookup_filter_and_errors_never_show_the_password(kind, request, workers, ansible, quiet_files,
                                                                  monkeypatch):
    user = request.getfixturevalue('redis_user' if kind == 'redis' else 'rabbit_user')
    secrets = secrets_of(user.password, WRONG_PASSWORD, *SLASHED)
    scheme = 'redis' if kind == 'redis' else 'amqp'
    port = 6379 if kind == 'redis' else 5672
    path = user.url.rsplit('/', 1)[1]
    monkeypatch.setenv('COF_URL', user.url)
    monkeypatch.setenv('COF_USER_URL', user.url.replace(':%s@' % urllib.parse.quote(user.password), '@'))
    monkeypatch.setenv('COF_PASSWORD', user.password)
    monkeypatch.setenv('COF_WRONG', WRONG_PASSWORD)
    monkeypatch.setenv('COF_SLASH_A', SLASHED[0])
    monkeypatch.setenv('COF_SLASH_B', SLASHED[1])
    assert os.environ['COF_USER_URL'] != user.url

    node = 'secret-%s@test' % kind
    queue = 'sec_%s' % kind
    # A real worker logged in as the user (its log goes below tmp_path, and is scanned).
    workers.start(user.url, node, [queue + '_busy'], events=True, heartbeat_interval=1)
    ids = publish(user.url, ADD, queue, args=(1, 2), count=3)
    publish(user.url, ADD, queue + '_purge', args=(1, 2), count=2)

    if kind == 'redis':
        raw = request.getfixturevalue('redis_env').client.lindex(queue, -1).decode()
    else:
        raw = management('POST', '/api/queues/%s/%s/get' % (request.getfixturevalue('rabbit_env').qvhost, queue),
                         {'count': 1, 'ackmode': 'ack_requeue_true', 'encoding': 'auto'})[0]
    tasks = module_tasks(node, queue)
    tasks.append({'ansible.builtin.debug': {'msg': '{{ raw | celeryops.fleet.decode_message }}'}})
    errors = error_tasks(scheme, user.name, port, path)
    tasks += [{'celeryops.fleet.celery_queue_info': dict(dict(queues=[queue]), **args)} for args, _texts in errors]
    tasks.append({'ansible.builtin.debug': {'msg': "{{ query('celeryops.fleet.queue_depth', '%s', broker_url=lookup("
                                                   "'ansible.builtin.env', 'COF_USER_URL'), broker_password=lookup("
                                                   "'ansible.builtin.env', 'COF_WRONG')) }}" % queue}})
    results = ansible.play(tasks, verbosity=4, timeout=300, play_extra={'vars': {'raw': raw}})
    check_run(ansible, secrets, 'the modules at -vvvv')
    assert_clean(json.dumps(results), secrets, 'the returned facts')

    (info, info_password, purge, workers_info, consuming, events, depth, depth_password, decoded) = results[:9]
    for index, result in enumerate(results[:9]):
        assert not result.get('failed'), (index, result)
    assert info['queues'][0]['messages'] == 3 and [m['id'] for m in info['queues'][0]['peek']] == ids[:2], info
    assert info_password['queues'][0]['messages'] == 3
    assert purge['changed'] and purge['queues'][0]['removed'] == 2, purge
    assert workers_info['online'] == [node], workers_info
    assert workers_info['workers'][node]['conf'] and workers_info['workers'][node]['stats'], workers_info
    assert consuming['changed'] is True, consuming
    assert events['events'] > 0, events  # the worker sends heartbeats
    assert depth['msg'] == [3] and depth_password['msg'] == [3], (depth, depth_password)
    assert decoded['msg']['id'] == ids[0] and decoded['msg']['task'] == ADD, decoded
    assert len(results) == 9 + len(errors) + 1
    for (args, texts), result in zip(errors, results[9:]):
        assert result.get('failed'), (args, result)
        for text in texts:
            assert text in result['msg'], (args, text, result['msg'])
    assert results[-1].get('failed') and 'authentication failed' in results[-1]['msg'], results[-1]

    # The inventory plugin, at -vvvv, from the environment (no file holds the URL).
    inventory = quiet_files / 'fleet.celery_workers.yml'
    inventory.write_text(json.dumps({'plugin': 'celeryops.fleet.celery_workers', 'expected_count': 1, 'timeout': 10}))
    wrong_url = user.url.replace(':%s@' % urllib.parse.quote(user.password), ':%s@' % WRONG_PASSWORD)
    for url, ok in ((user.url, True), (wrong_url, False)):
        out = subprocess.run(['ansible-inventory', '-i', str(inventory), '--list', '-vvvv'], capture_output=True,
                             text=True, timeout=120, check=False,
                             env=dict(os.environ, CELERY_BROKER_URL=url, ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                                      ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED='1'))
        assert_clean(out.stdout + out.stderr, secrets, 'ansible-inventory -vvvv')
        if ok:
            text = out.stdout[0 if out.stdout.startswith('{') else out.stdout.index('\n{') + 1:]
            assert out.returncode == 0 and 'test' in json.loads(text)['_meta']['hostvars'], out.stderr[-2000:]
        else:
            assert out.returncode != 0 and 'authentication failed' in out.stderr, out.stderr[-2000:]

    assert scan(str(quiet_files), secrets) == []


@pytest.fixture
def secret_deployment(redis_user, quiet_files, monkeypatch):
    """test_roles' Deployment (supervisor under a directory of its own, no SSH), with the broker URL and the
    Flower credentials taken from the environment by the plays."""
    monkeypatch.setenv('COF_URL', redis_user.url)
    monkeypatch.setenv('COF_USER_URL', redis_user.url.replace(':%s@' % redis_user.password, '@'))
    monkeypatch.setenv('COF_PASSWORD', redis_user.password)
    monkeypatch.setenv('COF_WRONG', WRONG_PASSWORD)
    monkeypatch.setenv('COF_FLOWER_AUTH', 'ops:' + FLOWER_PASSWORD)
    base = tempfile.mkdtemp(prefix='cof-sec-', dir='/tmp')  # short: supervisord's socket lives below it
    deployment = Deployment(env_var('COF_URL'), base)
    yield deployment
    deployment.shutdown()
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.mitogen
def test_roles_and_playbooks_never_show_the_password(secret_deployment, redis_user, redis_env, quiet_files):
    deployment = secret_deployment
    secrets = secrets_of(redis_user.password, FLOWER_PASSWORD, WRONG_PASSWORD)
    runs = []

    def playbook(name, extra_vars=None, ok=True):
        report = deployment.playbook('celeryops.fleet.' + name, extra_vars, host_vars=host_vars, verbosity=4)
        runs.append((name, deployment.last))
        assert (deployment.last.returncode == 0) == ok, (name, deployment.last.returncode, deployment.last.stdout[-3000:])
        return report

    # Root is allowed here: the point is the password.
    host_vars = {'localhost': {'celery_workers': [worker('sec', ['sec_roles'], time_limit=20)], 'worker_allow_root': True}}
    port = free_port()
    flower_vars = {'flower_port': port, 'flower_basic_auth': [env_var('COF_FLOWER_AUTH')], 'flower_virtualenv': VENV,
                   'flower_allow_root': True}
    report = deployment.run(['celeryops.fleet.worker', 'celeryops.fleet.flower'], dict(flower_vars, **host_vars['localhost']),
                            verbosity=4)
    runs.append(('the worker and flower roles', deployment.last))
    assert deployment.last.returncode == 0, failure(report)
    # The credentials in use are the secret ones: Flower lets the password in, and the worker logged in as the user.
    url = 'http://127.0.0.1:%d/workers' % port
    assert http_status(url, 'ops:' + FLOWER_PASSWORD) == 200 and http_status(url, 'ops:' + WRONG_PASSWORD) == 401
    clients = redis_env.client.client_list()
    assert any(client.get('user') == redis_user.name for client in clients), clients

    publish(redis_user.url, ADD, 'sec_purge', args=(1, 2), count=4)
    # The password through celery_broker_password (not in the URL) for some of the playbooks.
    by_password = {'celery_broker_url': env_var('COF_USER_URL'), 'celery_broker_password': env_var('COF_PASSWORD')}
    checked = playbook('health_check', dict(by_password, health_check_timeout=5))
    assert 'sec@localhost' in json.dumps(checked)
    playbook('purge', {'purge_queues': ['sec_purge'], 'purge_confirm': True})
    assert redis_env.client.llen('sec_purge') == 0
    drained = playbook('drain', by_password)
    assert stats(drained)['changed'] >= 1, stats(drained)
    pid = deployment.pid('celery-worker-sec')
    playbook('rolling_restart', {'rolling_restart_wait_timeout': 60, 'rolling_restart_drain_timeout': 30})
    assert deployment.pid('celery-worker-sec') != pid
    unhealthy = playbook('health_check', dict(by_password, celery_broker_password=env_var('COF_WRONG')), ok=False)
    assert 'authentication failed' in json.dumps(unhealthy)

    for name, run in runs:
        assert_clean(run.stdout, secrets, '%s stdout' % name)
        assert_clean(run.stderr, secrets, '%s stderr' % name)
    # The supervisor program files hold the broker URL and Flower's credentials: 0600, and nothing else may.
    conf_d = os.path.join(deployment.root(), 'conf.d')
    allowed = [os.path.join(conf_d, 'celery-worker-sec.conf'), os.path.join(conf_d, 'flower.conf')]
    for path in allowed:
        with open(path) as handle:
            text = handle.read()
        assert any(secret in text for secret in secrets), path
    assert scan(deployment.base, secrets, allowed) == []
    assert scan(str(quiet_files), secrets) == []


def test_a_user_named_like_its_password_is_left_out_not_masked(rabbit_env, ansible):
    """guest/guest through broker_password: Ansible would print the user as VALUE_SPECIFIED_IN_NO_LOG_PARAMETER
    (it masks any value equal to a no_log option's), and showing it would show the password. The facts say null
    and a warning says why, through ansible-playbook against RabbitMQ; a user with a password of its own shows."""
    publish(rabbit_env.url, ADD, 'guest_q', args=(1, 2), count=2)
    by_password = {'celery_broker_url': rabbit_env.url.replace('guest:guest@', 'guest@'), 'celery_broker_password': 'guest',
                   'queue_report_queues': ['guest_q']}
    for settings in (by_password, {'celery_broker_url': rabbit_env.url, 'queue_report_queues': ['guest_q']}):
        described = ansible.playbook('queue_report', settings)['Describe the queues']
        output = ansible.last['stdout'] + ansible.last['stderr']
        assert ansible.last['rc'] == 0, output[-3000:]
        assert described['broker']['user'] is None, described['broker']
        assert described['queues'][0]['messages'] == 2, described
        assert any(warning.startswith('broker.user is null: the broker password is the user name')
                   for warning in described['warnings']), described.get('warnings')
        # The module's arguments (invocation) stay masked, as they should; the facts hold no masked value.
        assert 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' not in json.dumps([described['broker'], described['queues']])

    name = 'fleet-test-%s' % uuid.uuid4().hex[:8]
    management('PUT', '/api/users/%s' % name, {'password': WRONG_PASSWORD, 'tags': ''})
    try:
        management('PUT', '/api/permissions/%s/%s' % (rabbit_env.qvhost, name), {'configure': '.*', 'write': '.*', 'read': '.*'})
        own = ansible.playbook('queue_report', dict(by_password, celery_broker_url=by_password['celery_broker_url'].replace(
            'guest@', '%s@' % name), celery_broker_password=WRONG_PASSWORD))['Describe the queues']
        assert ansible.last['rc'] == 0 and own['broker']['user'] == name, own
        assert not own.get('warnings'), own['warnings']
    finally:
        management('DELETE', '/api/users/%s' % name)
