"""The supervisor, worker, beat and flower roles through ansible-playbook, as users run them.

Every path is under a short directory of the test's own (unix socket paths are limited), supervisor
comes from this virtualenv (supervisor_install_method: pip, already installed, so nothing is
downloaded), supervisord is started directly (no root, no systemd) and is shut down at the end.
The workers are real Celery workers of the test app on the test's Redis database.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from harness import APP_DIR, free_port, http_status

VENV = sys.prefix
SUPERVISORCTL = os.path.join(VENV, 'bin', 'supervisorctl')


class Deployment(object):
    """One supervisor root per inventory host, and ansible-playbook runs of the roles against them."""

    def __init__(self, broker_url, base, service=None):
        self.broker_url = broker_url
        self.base = base
        self.last = None
        self.account = None  # an Account: ansible-playbook runs as that user
        self.service = service  # an Account: the workers of worker() run as that user

    def worker(self, name, queues, **extra):
        """A worker of the test app that runs as the service account, from its virtualenv."""
        service = self.service
        environment = dict(service.env, **extra.pop('environment', {}))
        return worker(name, queues, user=service.NAME, virtualenv=service.venv, environment=environment, **extra)

    def root(self, host='localhost'):
        return os.path.join(self.base, host)

    def config(self, host='localhost'):
        return os.path.join(self.root(host), 'supervisord.conf')

    def host_vars(self, host):
        return dict(ansible_connection='local', ansible_python_interpreter=sys.executable,
                    supervisor_install_method='pip', supervisor_pip_virtualenv=VENV,
                    supervisor_start_method='direct', supervisor_root=self.root(host))

    def run(self, roles, play_vars=None, hosts=('localhost',), host_vars=None, check=False, timeout=300, verbosity=0,
            limit=None):
        """ansible-playbook with the roles; returns the JSON report (the run's rc is in self.last)."""
        play = dict(hosts='all', gather_facts=False, roles=list(roles),
                    vars=dict({'celery_broker_url': self.broker_url}, **(play_vars or {})))
        play_path = os.path.join(self.base, 'play-%d.yml' % (time.monotonic() * 1e6))
        with open(play_path, 'w') as handle:
            json.dump([play], handle)
        return self.playbook(play_path, hosts=hosts, host_vars=host_vars, check=check, timeout=timeout,
                             verbosity=verbosity, limit=limit)

    def playbook(self, playbook, extra_vars=None, hosts=('localhost',), host_vars=None, check=False, timeout=300,
                 verbosity=0, limit=None):
        """ansible-playbook PLAYBOOK (a file, or a collection playbook such as celeryops.fleet.drain) on an
        inventory of the hosts (group `workers`); returns the JSON report (the run's rc is in self.last)."""
        hosts_vars = dict((host, dict(self.host_vars(host), **(host_vars or {}).get(host, {}))) for host in hosts)
        inventory = {'all': {'vars': {'celery_broker_url': self.broker_url}, 'children': {'workers': {'hosts': hosts_vars}}}}
        inventory_path = os.path.join(self.base, 'inventory-%d.json' % (time.monotonic() * 1e6))
        with open(inventory_path, 'w') as handle:
            json.dump(inventory, handle)
        argv = ['ansible-playbook', '-i', inventory_path, playbook] + (['--check'] if check else [])
        if limit:
            argv += ['--limit', limit]
        if extra_vars:
            argv += ['-e', json.dumps(extra_vars)]
        if verbosity:
            argv.append('-' + 'v' * verbosity)
        env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK='ansible.posix.json', ANSIBLE_NOCOLOR='1',
                   ANSIBLE_DEPRECATION_WARNINGS='false', ANSIBLE_LOCALHOST_WARNING='false')
        if self.account:
            argv = self.account.wrap(argv, env)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        self.last = proc
        # At -v and more, Ansible's own lines come before the JSON report.
        text = proc.stdout
        try:
            return json.loads(text[0 if text.startswith('{') else text.find('\n{\n') + 1:])
        except ValueError:
            raise AssertionError('no JSON from ansible-playbook (rc %s):\n%s\n%s'
                                 % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))

    def supervisorctl(self, *args, host='localhost'):
        return subprocess.run([SUPERVISORCTL, '-c', self.config(host)] + list(args), capture_output=True,
                              text=True, timeout=60, check=False).stdout

    def pid(self, program, host='localhost'):
        return int(self.supervisorctl('pid', program, host=host).strip())

    def shutdown(self):
        """Stop every supervisord of this deployment, and with it its programs."""
        for host in os.listdir(self.base):
            pidfile = os.path.join(self.base, host, 'supervisord.pid')
            if not os.path.exists(pidfile):
                continue
            with open(pidfile) as handle:
                pid = int(handle.read().strip())
            self.supervisorctl('shutdown', host=host)
            # Without its socket, TERM makes supervisord stop its programs too; KILL is the last resort.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and os.path.exists('/proc/%d' % pid):
                    time.sleep(0.2)
                if os.path.exists('/proc/%d' % pid):
                    os.kill(pid, sig)


@pytest.fixture(scope='session')
def service_account():
    """The account without root that the roles' programs run as (the roles refuse root unless told), with a
    virtualenv it can read; made once for the session."""
    base = tempfile.mkdtemp(prefix='cof-account-', dir='/tmp')
    yield Account(base)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def deployment(redis_env, service_account):
    # Short: supervisord's socket lives below it.
    base = tempfile.mkdtemp(prefix='cof-roles-', dir='/tmp')
    deployment = Deployment(redis_env.url, base, service_account)
    yield deployment
    deployment.shutdown()
    shutil.rmtree(base, ignore_errors=True)


def stats(report, host='localhost'):
    return report['stats'][host]


def results(report, name_part, host='localhost'):
    """The results of every task whose name contains name_part."""
    return [task['hosts'][host] for play in report['plays'] for task in play['tasks']
            if name_part in task['task']['name'] and host in task['hosts']]


def failure(report, host='localhost'):
    """The message of the task that stopped the host (its last failure; ignored ones come before it)."""
    failed = ['%s: %s' % (task['task']['name'], task['hosts'][host].get('msg', ''))
              for play in report['plays'] for task in play['tasks']
              if host in task['hosts'] and task['hosts'][host].get('failed')]
    assert failed, 'nothing failed on %s' % host
    return failed[-1]


def worker(name, queues, **extra):
    return dict(dict(name=name, app='fleet_tasks', queues=queues, pool='threads', workdir=APP_DIR, virtualenv=VENV),
                **extra)


def missing(ansible, url, nodes):
    """The nodes that do not answer ping."""
    return ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=nodes, include=['ping'],
                                                     timeout=5))['missing']


def test_workers_check_mode_deploy_idempotent_and_restart_one_through_drain(deployment, ansible):
    # As the README shows: the workers run as an account without root.
    workers = [deployment.worker('alpha', ['roles_a'], concurrency=2, time_limit=60),
               deployment.worker('beta', ['roles_b', 'roles_c'], environment={'FLEET_NOTE': '50% done'})]
    roles = ['celeryops.fleet.worker']

    # Check mode on a fresh directory: changes reported, nothing written, nothing started. Another pinned
    # version of supervisor than the virtualenv's goes to pip (which, in check mode, only says it would install).
    report = deployment.run(roles, {'celery_workers': workers, 'supervisor_pip_package': 'supervisor==4.2.5'},
                            check=True)
    assert deployment.last.returncode == 0, failure(report)
    assert stats(report)['changed'] > 0
    assert not os.path.exists(deployment.root())
    assert results(report, 'Install supervisor with pip')[0]['changed'] is True

    report = deployment.run(roles, {'celery_workers': workers})
    assert deployment.last.returncode == 0, failure(report)
    assert missing(ansible, deployment.broker_url, ['alpha@localhost', 'beta@localhost']) == []
    program = os.path.join(deployment.root(), 'conf.d', 'celery-worker-alpha.conf')
    assert oct(os.stat(program).st_mode & 0o777) == '0o600'  # it holds the broker URL
    with open(program) as handle:
        text = handle.read()
    assert 'stopwaitsecs=90\n' in text and 'stopasgroup=true' in text and 'killasgroup=true' in text
    assert 'stopsignal=TERM' in text and '--time-limit 60' in text
    assert oct(os.stat(deployment.root() + '/supervisor.sock').st_mode & 0o777) == '0o700'
    # The environment reached the worker intact ('%' is special to supervisor), and was never printed.
    with open('/proc/%d/environ' % deployment.pid('celery-worker-beta'), 'rb') as handle:
        environ = handle.read().split(b'\0')
    assert b'FLEET_NOTE=50% done' in environ and b'CELERY_BROKER_URL=' + deployment.broker_url.encode() in environ
    assert '50% done' not in deployment.last.stdout and deployment.broker_url not in deployment.last.stdout

    report = deployment.run(roles, {'celery_workers': workers})
    assert deployment.last.returncode == 0 and stats(report)['changed'] == 0, stats(report)
    # The virtualenv's supervisord is the pinned version: pip is not asked.
    assert results(report, 'Install supervisor with pip')[0].get('skipped') is True

    # Change alpha only. Check mode predicts it and drains nothing; then alpha is drained and
    # restarted, and beta keeps its pid.
    alpha_pid, beta_pid = deployment.pid('celery-worker-alpha'), deployment.pid('celery-worker-beta')
    workers[0]['concurrency'] = 3
    report = deployment.run(roles, {'celery_workers': workers}, check=True)
    assert deployment.last.returncode == 0 and stats(report)['changed'] == 1, failure(report)
    assert results(report, 'Drain alpha@localhost')[0].get('skipped') is True
    assert deployment.pid('celery-worker-alpha') == alpha_pid and '--concurrency 2' in open(program).read()

    report = deployment.run(roles, {'celery_workers': workers})
    assert deployment.last.returncode == 0, failure(report)
    drain = results(report, 'Drain alpha@localhost')
    assert drain and drain[0]['changed'] is True
    assert results(report, 'Drain beta@localhost')[0].get('skipped') is True
    assert deployment.pid('celery-worker-beta') == beta_pid
    assert deployment.pid('celery-worker-alpha') != alpha_pid
    # The old alpha stopped consuming (the drain), and only then got the TERM of its warm shutdown.
    with open(os.path.join(deployment.root(), 'log', 'celery-worker-alpha.log')) as handle:
        log = handle.read()
    assert -1 < log.find('Canceling queue roles_a') < log.find('Warm shutdown') < log.rfind('alpha@localhost ready.')
    assert '--concurrency 3' in open(program).read()

    # A worker dropped from the list is stopped and removed.
    report = deployment.run(roles, {'celery_workers': workers[:1]})
    assert deployment.last.returncode == 0, failure(report)
    assert 'celery-worker-beta' not in deployment.supervisorctl('status')
    assert not os.path.exists(os.path.join(deployment.root(), 'conf.d', 'celery-worker-beta.conf'))


def test_workers_that_do_not_come_up_are_named(deployment):
    # Runs, but answers under another node name: only the ping check can tell.
    renamed = [worker('ghost', ['roles_g'], extra_args=['--hostname', 'elsewhere@localhost'])]
    report = deployment.run(['celeryops.fleet.worker'],
                            {'celery_workers': renamed, 'worker_wait_timeout': 5, 'worker_allow_root': True})
    assert deployment.last.returncode != 0
    assert 'did not come up' in failure(report) and 'ghost@localhost' in failure(report)
    assert deployment.broker_url not in deployment.last.stdout

    # Cannot import its app: supervisor gives up on it and the deploy says so at once, or, when the
    # import outlasts startsecs on a busy machine, the ping check names it.
    broken = [worker('broken', ['roles_g'], app='no_such_module_anywhere')]
    report = deployment.run(['celeryops.fleet.worker'],
                            {'celery_workers': broken, 'worker_wait_timeout': 10, 'worker_allow_root': True})
    assert deployment.last.returncode != 0
    message = failure(report)
    assert 'celery-worker-broken (Celery nodes broken@localhost) did not start' in message or \
        ('did not come up' in message and 'broken@localhost' in message), message


@pytest.mark.mitogen
def test_two_hosts_workers_checked_in_one_broadcast_and_one_beat(deployment, ansible):
    service = deployment.service
    os.chmod(deployment.base, 0o755)  # a private mkdtemp: the account could not reach beat's directory
    beat_vars = {'beat_app': 'fleet_tasks', 'beat_virtualenv': service.venv, 'beat_workdir': APP_DIR,
                 'beat_user': service.NAME, 'beat_environment': service.env}
    hosts = ('fleet1', 'fleet2')
    host_vars = dict((host, {'celery_workers': [deployment.worker('w', ['roles_%s' % host])]}) for host in hosts)
    host_vars['fleet2']['beat_enabled'] = False
    report = deployment.run(['celeryops.fleet.worker', 'celeryops.fleet.beat'], beat_vars, hosts=hosts,
                            host_vars=host_vars)
    assert deployment.last.returncode == 0, failure(report, 'fleet1')
    # The ping check ran once, for both hosts' nodes.
    pings = [task['hosts'] for play in report['plays'] for task in play['tasks']
             if task['task']['name'].endswith('Wait until every worker node of the play answers ping')]
    assert len(pings) == 1 and len(pings[0]) == 1, pings
    assert missing(ansible, deployment.broker_url, ['w@fleet1', 'w@fleet2']) == []
    assert 'RUNNING' in deployment.supervisorctl('status', 'celery-beat', host='fleet1')
    assert 'celery-beat' not in deployment.supervisorctl('status', host='fleet2')
    deadline = time.monotonic() + 20  # beat opens its schedule file, in its own directory, once it is up
    beat_dir = os.path.join(deployment.root('fleet1'), 'celery-beat')
    while not any(name.startswith('celerybeat-schedule') for name in os.listdir(beat_dir)):
        assert time.monotonic() < deadline, os.listdir(beat_dir)
        time.sleep(0.5)

    # A second beat is refused, naming the hosts, before anything changes.
    del host_vars['fleet2']['beat_enabled']
    report = deployment.run(['celeryops.fleet.beat'], beat_vars, hosts=hosts, host_vars=host_vars)
    assert deployment.last.returncode != 0
    message = failure(report, 'fleet1')
    assert 'beat_enabled' in message and 'fleet1, fleet2' in message
    assert 'celery-beat' not in deployment.supervisorctl('status', host='fleet2')

    # A play limited to fleet2 sees fleet1's beat through the inventory of beat_group (fleet1 does
    # not set beat_enabled there: the default, true, counts)...
    group_vars = dict(beat_vars, beat_group='all')
    report = deployment.run(['celeryops.fleet.beat'], group_vars, hosts=hosts, host_vars=host_vars, limit='fleet2',
                            check=True)
    assert deployment.last.returncode != 0
    message = failure(report, 'fleet2')
    assert 'on 2 hosts (fleet2, fleet1; fleet1 by the inventory, outside this play)' in message, message
    # ... and moves beat when the inventory says fleet1 no longer runs it.
    host_vars['fleet1']['beat_enabled'] = False
    report = deployment.run(['celeryops.fleet.beat'], group_vars, hosts=hosts, host_vars=host_vars, limit='fleet2',
                            check=True)
    assert deployment.last.returncode == 0, failure(report, 'fleet2')
    assert results(report, 'Refuse a second beat', 'fleet2')[0].get('failed') is not True
    report = deployment.run(['celeryops.fleet.beat'], dict(beat_vars, beat_group='beats'), hosts=hosts,
                            host_vars=host_vars, limit='fleet2', check=True)
    assert deployment.last.returncode != 0
    assert 'beat_group: beats is not a group of the inventory' in failure(report, 'fleet2')


# The settings of the worker and beat roles were named celery_worker_* and celery_beat_*; the old names
# still work for one release, each with a message that names its new one.
WORKER_RENAMED = {'celery_worker_program_prefix': 'worker_program_prefix',
                  'celery_worker_wait_timeout': 'worker_wait_timeout'}
BEAT_RENAMED = {'celery_beat_app': 'beat_app', 'celery_beat_virtualenv': 'beat_virtualenv',
                'celery_beat_workdir': 'beat_workdir', 'celery_beat_user': 'beat_user',
                'celery_beat_environment': 'beat_environment', 'celery_beat_program': 'beat_program'}


def deprecations(report, host='localhost'):
    """The messages of the roles' deprecation warnings (one a role, when an old name is set)."""
    return [result['msg'] for result in results(report, 'Warn about deprecated variable names', host)
            if not result.get('skipped')]


def test_deprecated_names_still_work_and_warn_naming_the_new_ones(deployment):
    service = deployment.service
    os.chmod(deployment.base, 0o755)  # a private mkdtemp: the account could not reach beat's directory
    roles = ['celeryops.fleet.worker', 'celeryops.fleet.beat']
    workers = [deployment.worker('old', ['roles_old'])]
    new = {'worker_program_prefix': 'legacy-worker-', 'worker_wait_timeout': 60, 'beat_app': 'fleet_tasks',
           'beat_virtualenv': service.venv, 'beat_workdir': APP_DIR, 'beat_user': service.NAME,
           'beat_environment': service.env, 'beat_program': 'legacy-beat'}
    old = dict((name, new[renamed]) for name, renamed in dict(WORKER_RENAMED, **BEAT_RENAMED).items())

    # Only the old names: the programs are named, and beat's directory placed, as they say.
    report = deployment.run(roles, dict(old, celery_workers=workers))
    assert deployment.last.returncode == 0, failure(report)
    assert 'RUNNING' in deployment.supervisorctl('status', 'legacy-worker-old')
    assert 'RUNNING' in deployment.supervisorctl('status', 'legacy-beat')
    assert os.path.isdir(os.path.join(deployment.root(), 'legacy-beat'))  # beat_data_dir follows the old program name
    worker_warning, beat_warning = deprecations(report)
    for warning, renamed in ((worker_warning, WORKER_RENAMED), (beat_warning, BEAT_RENAMED)):
        assert warning.startswith('DEPRECATED: ') and 'celeryops.fleet 0.2.0' in warning, warning
        for name, new_name in renamed.items():
            assert '%s is now %s' % (name, new_name) in warning, warning

    # The same values under the new names: nothing changes, and nothing is said.
    report = deployment.run(roles, dict(new, celery_workers=workers))
    assert deployment.last.returncode == 0, failure(report)
    assert stats(report)['changed'] == 0, [task['task']['name'] for play in report['plays'] for task in play['tasks']
                                           if task['hosts'].get('localhost', {}).get('changed')]
    assert deprecations(report) == []

    # Both names: the new one wins (check mode: the program files that would be written are the new names').
    report = deployment.run(roles, dict(old, worker_program_prefix='new-worker-', beat_program='new-beat',
                                        celery_workers=workers), check=True)
    assert deployment.last.returncode == 0, failure(report)
    for program in ('new-worker-old', 'new-beat'):
        assert results(report, 'Write the program file of %s' % program)[0]['changed'] is True
    for program in ('legacy-worker-old', 'legacy-beat'):
        assert results(report, 'Write the program file of %s' % program) == []
    assert len(deprecations(report)) == 2  # the old names are still set


def test_deprecated_names_in_errors_and_the_new_name_wins(deployment):
    # localhost sets only the old name, other both: each message names the variable whose value is used.
    hosts = ('localhost', 'other')
    workers = [worker('r', ['roles_r'], user='root')]
    host_vars = {'localhost': {'celery_worker_allow_root': False},
                 'other': {'celery_worker_allow_root': True, 'worker_allow_root': False}}
    report = deployment.run(['celeryops.fleet.worker'], {'celery_workers': workers}, hosts=hosts, host_vars=host_vars)
    assert deployment.last.returncode != 0
    message = failure(report, 'localhost')
    assert 'would run as root' in message, message
    assert 'celery_worker_allow_root (now worker_allow_root): true' in message, message
    message = failure(report, 'other')
    assert 'would run as root' in message and 'worker_allow_root: true' in message, message
    assert 'celery_worker_allow_root' not in message, message
    assert 'celery_worker_allow_root is now worker_allow_root' in deprecations(report, 'other')[0]

    beat_vars = {'beat_app': 'fleet_tasks', 'beat_allow_root': True, 'beat_allow_multiple': True}
    bad, good = os.path.join(deployment.base, 'beat') + '/', os.path.join(deployment.base, 'beat')
    host_vars = {'localhost': {'celery_beat_data_dir': bad},
                 'other': {'celery_beat_data_dir': good, 'beat_data_dir': bad}}
    report = deployment.run(['celeryops.fleet.beat'], beat_vars, hosts=hosts, host_vars=host_vars)
    assert deployment.last.returncode != 0
    assert 'celery_beat_data_dir (now beat_data_dir) (%s) must be' % bad in failure(report, 'localhost')
    assert ': beat_data_dir (%s) must be' % bad in failure(report, 'other')

    # beat_app is required, though the argument spec cannot say so while celery_beat_app may stand for it.
    report = deployment.run(['celeryops.fleet.beat'], {'beat_allow_root': True}, check=True)
    assert deployment.last.returncode != 0
    assert 'beat_app is required' in failure(report), failure(report)

    # The one-beat check reads the old name in the inventory of a host outside the play.
    hosts = ('fleet1', 'fleet2')
    beat_vars = {'beat_app': 'fleet_tasks', 'beat_allow_root': True, 'beat_group': 'all'}
    host_vars = {'fleet1': {'celery_beat_enabled': False}}
    report = deployment.run(['celeryops.fleet.beat'], beat_vars, hosts=hosts, host_vars=host_vars, limit='fleet2',
                            check=True)
    assert deployment.last.returncode == 0, failure(report, 'fleet2')
    host_vars = {'fleet1': {'celery_beat_enabled': True}}
    report = deployment.run(['celeryops.fleet.beat'], beat_vars, hosts=hosts, host_vars=host_vars, limit='fleet2',
                            check=True)
    assert deployment.last.returncode != 0
    message = failure(report, 'fleet2')
    assert 'beat_enabled (or its deprecated name celery_beat_enabled) is true on 2 hosts' in message, message


def test_fleet_playbooks_read_the_new_names_and_the_old(deployment):
    # The fleet playbooks find a host's programs and the control host from the worker role's settings in the
    # inventory: the new name, else the deprecated one, else the role's default.
    fleet_vars = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              'playbooks', 'vars', 'fleet.yml')
    playbook = os.path.join(deployment.base, 'fleet-vars.yml')
    show = '{{ {"control": _fleet_control_host, "programs": _fleet_workers | map(attribute="program") | list} }}'
    with open(playbook, 'w') as handle:
        json.dump([{'hosts': 'workers', 'gather_facts': False, 'vars_files': [fleet_vars],
                    'vars': {'_fleet_scope': '{{ [inventory_hostname] }}'},
                    'tasks': [{'name': 'Show', 'ansible.builtin.debug': {'msg': show}}]}], handle)
    workers = [worker('w', ['q'])]
    host_vars = {'new': {'celery_workers': workers, 'worker_program_prefix': 'new-', 'worker_control_host': 'ctl-new'},
                 'old': {'celery_workers': workers, 'celery_worker_program_prefix': 'old-',
                         'celery_worker_control_host': 'ctl-old'},
                 'both': {'celery_workers': workers, 'worker_program_prefix': 'new-', 'worker_control_host': 'ctl-new',
                          'celery_worker_program_prefix': 'old-', 'celery_worker_control_host': 'ctl-old'},
                 'neither': {'celery_workers': workers}}
    report = deployment.playbook(playbook, hosts=tuple(host_vars), host_vars=host_vars)
    assert deployment.last.returncode == 0, deployment.last.stdout[-3000:]
    shown = dict((host, results(report, 'Show', host)[0]['msg']) for host in host_vars)
    assert shown == {'new': {'control': 'ctl-new', 'programs': ['new-w']},
                     'old': {'control': 'ctl-old', 'programs': ['old-w']},
                     'both': {'control': 'ctl-new', 'programs': ['new-w']},
                     'neither': {'control': 'localhost', 'programs': ['celery-worker-w']}}, shown


def test_flower_answers_with_auth_only(deployment):
    port = free_port()
    secret = 'ops:s3cret-%d' % port
    service = deployment.service
    os.chmod(deployment.base, 0o755)  # a private mkdtemp: the account could not reach its data directory
    flower_vars = {'flower_port': port, 'flower_basic_auth': [secret], 'flower_virtualenv': service.venv,
                   'flower_user': service.NAME, 'flower_environment': service.env}
    report = deployment.run(['celeryops.fleet.flower'], flower_vars)
    assert deployment.last.returncode == 0, failure(report)
    url = 'http://127.0.0.1:%d/workers' % port
    assert http_status(url) == 401
    assert http_status(url, 'ops:wrong') == 401
    assert http_status(url, secret) == 200
    program = os.path.join(deployment.root(), 'conf.d', 'flower.conf')
    assert oct(os.stat(program).st_mode & 0o777) == '0o600'
    with open(program) as handle:
        command = [line for line in handle if line.startswith('command=')][0]
    assert secret not in command and '--persistent=True' in command
    assert secret not in deployment.last.stdout + deployment.last.stderr
    # Flower's database is in its own directory, written by Flower as its account.
    data = os.path.join(deployment.root(), 'flower')
    assert set(os.stat(os.path.join(data, name)).st_uid for name in os.listdir(data) if name.startswith('flower.db')) \
        == {service.uid}


def supervisord_of(deployment, host='localhost'):
    """The pid and command line of the supervisord of a host's root."""
    with open(os.path.join(deployment.root(host), 'supervisord.pid')) as handle:
        pid = int(handle.read().strip())
    with open('/proc/%d/cmdline' % pid, 'rb') as handle:
        return pid, handle.read().split(b'\0')


def parent_pid(pid):
    with open('/proc/%d/stat' % pid) as handle:
        return int(handle.read().rsplit(')', 1)[1].split()[1])


def test_os_package_supervisor_without_systemd(deployment, ansible):
    """Debian's supervisor package (apt) runs the workers, and coexists with the pip one of this virtualenv."""
    systemd = os.path.isdir('/run/systemd/system')
    # auto picks `direct` on a host without systemd; on one with systemd it would install a system unit,
    # which a test must not do, so there it is asked for directly.
    package = {'supervisor_install_method': 'package', 'supervisor_start_method': 'direct' if systemd else 'auto'}
    report = deployment.run(['celeryops.fleet.worker'], {'celery_workers': [worker('pkg', ['roles_pkg'])], 'worker_allow_root': True},
                            host_vars={'localhost': package}, timeout=600)
    assert deployment.last.returncode == 0, failure(report)
    chosen = results(report, 'Choose how supervisord is kept running')[0]['ansible_facts']
    assert chosen['_supervisor_start_method'] == 'direct'
    assert missing(ansible, deployment.broker_url, ['pkg@localhost']) == []
    # The package's supervisord (Debian's /usr/bin, its own Python), with the role's configuration and socket,
    # is the parent of the worker.
    pid, cmdline = supervisord_of(deployment)
    assert b'/usr/bin/supervisord' in cmdline and deployment.config().encode() in cmdline, cmdline
    assert parent_pid(deployment.pid('celery-worker-pkg')) == pid
    assert oct(os.stat(deployment.root() + '/supervisor.sock').st_mode & 0o777) == '0o700'

    # A second run finds it running and changes nothing.
    report = deployment.run(['celeryops.fleet.worker'], {'celery_workers': [worker('pkg', ['roles_pkg'])], 'worker_allow_root': True},
                            host_vars={'localhost': package})
    assert deployment.last.returncode == 0 and stats(report)['changed'] == 0, stats(report)
    assert supervisord_of(deployment)[0] == pid

    if not systemd:
        # Asked for a systemd service where systemd does not run: refused before anything is written.
        report = deployment.run(['celeryops.fleet.supervisor'], host_vars={'localhost': dict(
            package, supervisor_start_method='service', supervisor_root=deployment.root('other'))}, check=True)
        assert deployment.last.returncode != 0
        message = failure(report)
        assert 'supervisor_start_method: service' in message and 'systemd' in message, message
        assert 'not running on this host' in message, message
        assert not os.path.exists(deployment.root('other'))


def copy_tree(source, target):
    """Hard links where they can be made (instant), a real copy across file systems."""
    if subprocess.run(['cp', '-al', source, target], capture_output=True, timeout=300, check=False).returncode:
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(['cp', '-a', source, target], check=True, timeout=900)


class Account(object):
    """A system user without root, a virtualenv it can read (this one's packages, hard-linked) and the collection."""

    NAME = 'celeryops-nonroot'

    def __init__(self, base):
        if subprocess.run(['getent', 'passwd', self.NAME], capture_output=True, check=False).returncode != 0:
            subprocess.run(['useradd', '--system', '--no-create-home', '--shell', '/usr/sbin/nologin', self.NAME],
                           check=True, capture_output=True, timeout=60)
        self.uid = int(subprocess.run(['id', '-u', self.NAME], capture_output=True, text=True, check=True).stdout)
        os.chmod(base, 0o755)
        self.home = os.path.join(base, 'home')
        os.mkdir(self.home)
        os.chown(self.home, self.uid, -1)
        self.env = {}
        self.venv = os.path.join(base, 'venv')
        subprocess.run([self.python(base), '-m', 'venv', '--without-pip', self.venv], check=True, capture_output=True,
                       timeout=120)
        # The packages, hard-linked (instant, read-only to the user), and the scripts we need with their
        # first line pointing at the new virtualenv.
        version = 'python%d.%d' % sys.version_info[:2]
        site = os.path.join(self.venv, 'lib', version, 'site-packages')
        shutil.rmtree(site)
        copy_tree(os.path.join(VENV, 'lib', version, 'site-packages'), site)
        for name in ('ansible-playbook', 'pip', 'supervisord', 'supervisorctl', 'celery'):
            with open(os.path.join(VENV, 'bin', name)) as handle:
                script = handle.read().split('\n', 1)[1]
            path = os.path.join(self.venv, 'bin', name)
            with open(path, 'w') as handle:
                handle.write('#!%s/bin/python\n%s' % (self.venv, script))
            os.chmod(path, 0o755)
        # The collection, as place_collection links it.
        self.collections = os.path.join(base, 'collections')
        os.makedirs(os.path.join(self.collections, 'ansible_collections', 'celeryops'))
        os.symlink(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   os.path.join(self.collections, 'ansible_collections', 'celeryops', 'fleet'))

    def python(self, base):
        """This Python, or a hard-linked copy of it when the user cannot run it (pyenv in root's home)."""
        python = os.path.join(sys.base_prefix, 'bin', 'python%d.%d' % sys.version_info[:2])
        if subprocess.run(['runuser', '-u', self.NAME, '--', python, '-c', 'pass'], capture_output=True, timeout=60,
                          check=False).returncode == 0:
            return python
        copy = os.path.join(base, 'python')
        copy_tree(sys.base_prefix, copy)
        # Its libpython is found through an absolute RUNPATH into the original; supervisord and the
        # workers inherit this from the role's environment.
        self.env['LD_LIBRARY_PATH'] = os.path.join(copy, 'lib')
        return os.path.join(copy, 'bin', os.path.basename(python))

    def wrap(self, argv, env):
        """argv run as the user, with only the environment Ansible needs."""
        keep = dict((key, value) for key, value in env.items() if key.startswith('ANSIBLE_') and key not in (
            'ANSIBLE_COLLECTIONS_PATH', 'ANSIBLE_PYTHON_INTERPRETER', 'ANSIBLE_CONFIG'))
        keep.update(self.env, HOME=self.home, PATH='%s/bin:/usr/bin:/bin' % self.venv, LANG='C.UTF-8',
                    ANSIBLE_COLLECTIONS_PATH=self.collections, ANSIBLE_PYTHON_INTERPRETER=self.venv + '/bin/python',
                    # Ansible finds ~ in the user database, where this user has no home directory.
                    ANSIBLE_REMOTE_TMP=self.home + '/.ansible/tmp', ANSIBLE_LOCAL_TEMP=self.home + '/.ansible/tmp')
        return (['runuser', '-u', self.NAME, '--', 'env', '-i'] + ['%s=%s' % item for item in sorted(keep.items())]
                + [os.path.join(self.venv, 'bin', argv[0])] + argv[1:])


def test_roles_without_root(deployment, ansible):
    """The README's recipe for a user directory: a user-level supervisord runs a worker that answers ping."""
    account = deployment.account = Account(deployment.base)
    root = deployment.root()
    os.mkdir(root)
    os.chown(root, account.uid, -1)
    host = {'ansible_python_interpreter': account.venv + '/bin/python', 'supervisor_pip_virtualenv': account.venv}
    report = deployment.run(['celeryops.fleet.worker'],
                            {'celery_workers': [worker('user', ['roles_user'], virtualenv=account.venv)]},
                            host_vars={'localhost': host})
    assert deployment.last.returncode == 0, failure(report)
    # Its own ping check passed; and asked from here, as root:
    assert missing(ansible, deployment.broker_url, ['user@localhost']) == []
    pid, _cmdline = supervisord_of(deployment)
    for process in (pid, deployment.pid('celery-worker-user')):
        assert os.stat('/proc/%d' % process).st_uid == account.uid, process
    for name in ('supervisord.conf', 'supervisor.sock', 'conf.d/celery-worker-user.conf'):
        assert os.stat(os.path.join(root, name)).st_uid == account.uid, name
    assert deployment.broker_url not in deployment.last.stdout


BAD_WORKERS = {
    'dupname': ([worker('one', ['q']), worker('one', ['r'])], 'celery_workers: the name one is used more than once'),
    'zero': ([worker('zero', ['q'], concurrency=0)], 'celery_workers[zero].concurrency must be 1 or more'),
    'noqueue': ([worker('idle', [])], 'celery_workers[idle].queues must list at least one queue'),
    'badpool': ([worker('odd', ['q'], pool='fibers')], "value of pool must be one of: prefork"),
    'nokey': ([dict(name='nokey', app='fleet_tasks')], 'missing required arguments: queues'),
    'badname': ([worker('a b', ['q'])], 'celery_workers[a b].name may hold only'),
}


def test_bad_worker_lists_are_refused(deployment):
    # One host per case, in one run: each host stops on its own error.
    report = deployment.run(['celeryops.fleet.worker'], hosts=list(BAD_WORKERS), check=True,
                            host_vars=dict((host, {'celery_workers': case[0]}) for host, case in BAD_WORKERS.items()))
    assert deployment.last.returncode != 0
    for host, (_workers, expected) in BAD_WORKERS.items():
        message = failure(report, host)
        assert expected in message and 'celery_workers' in message, (host, message)


def test_duplicate_node_names_across_hosts_are_refused(deployment):
    same = {'celery_workers': [worker('w', ['q'], node='same@fleet')]}
    report = deployment.run(['celeryops.fleet.worker'], hosts=['h1', 'h2'], host_vars={'h1': same, 'h2': same},
                            check=True)
    assert deployment.last.returncode != 0
    assert 'node names used by more than one worker: same@fleet' in failure(report, 'h1')


def test_flower_without_credentials_is_refused(deployment):
    report = deployment.run(['celeryops.fleet.flower'], {'flower_port': free_port()}, check=True)
    assert deployment.last.returncode != 0
    assert 'flower_basic_auth' in failure(report)
