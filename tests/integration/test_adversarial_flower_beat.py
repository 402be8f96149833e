"""Issue 13, items 2, 4 and 5 for the flower and beat roles, through ansible-playbook as users run them: the
service accounts own their own data directories (never supervisor's), Flower stays on loopback unless a proxy
guards it, and neither runs as root unless told to."""

import glob
import os
import time

from harness import APP_DIR, free_port, http_status
from test_roles import VENV, deployment, failure, service_account, stats  # noqa: F401 (fixtures)  # pylint: disable=unused-import

ROLES = ['celeryops.fleet.flower', 'celeryops.fleet.beat']


def as_account(account, port):
    """Play variables that run Flower (on PORT) and beat as ACCOUNT, from its virtualenv."""
    return {'flower_port': port, 'flower_basic_auth': ['ops:pw-%d' % port], 'flower_user': account.NAME,
            'flower_celery_executable': account.venv + '/bin/celery', 'flower_environment': account.env,
            'beat_app': 'fleet_tasks', 'beat_virtualenv': account.venv, 'beat_workdir': APP_DIR,
            'beat_user': account.NAME, 'beat_environment': account.env}


def owner_and_mode(path):
    status = os.stat(path)
    return status.st_uid, oct(status.st_mode & 0o777)


def written(pattern, timeout=60):
    """The files matching PATTERN, once there are any (a program opens its state file after it starts)."""
    deadline = time.monotonic() + timeout
    while not glob.glob(pattern):
        assert time.monotonic() < deadline, 'nothing matches %s' % pattern
        time.sleep(0.5)
    return glob.glob(pattern)


# -- item 2: the service accounts get directories of their own ---------------------------------------

def test_flower_and_beat_accounts_own_their_data_directories_not_supervisor_root(deployment):
    account = deployment.service
    os.chmod(deployment.base, 0o755)  # a private mkdtemp: the account could not reach its directories
    root, play_vars = deployment.root(), as_account(account, free_port())
    report = deployment.run(ROLES, play_vars)
    assert deployment.last.returncode == 0, failure(report)

    # supervisord's directories stay root's, as the supervisor role made them: whoever owns them can plant a
    # program file that supervisord runs as root.
    assert owner_and_mode(root) == (0, '0o755')
    assert owner_and_mode(os.path.join(root, 'conf.d')) == (0, '0o750')
    flower_dir, beat_dir = os.path.join(root, 'flower'), os.path.join(root, 'celery-beat')
    for directory in (flower_dir, beat_dir):
        assert owner_and_mode(directory) == (account.uid, '0o700'), directory
    # The running programs write their state there, as the account (a shelve: whoever writes it runs code in
    # the next Flower or beat that loads it).
    for path in written(flower_dir + '/flower.db*') + written(beat_dir + '/celerybeat-schedule*'):
        assert os.stat(path).st_uid == account.uid, path
    assert not glob.glob(root + '/flower.db*') and not glob.glob(root + '/celerybeat-schedule*')

    # Nothing flips back and forth between this role and the supervisor role.
    report = deployment.run(ROLES, play_vars)
    assert deployment.last.returncode == 0 and stats(report)['changed'] == 0, stats(report)
    assert owner_and_mode(root) == (0, '0o755')


def test_a_data_directory_on_supervisor_directories_is_refused(deployment):
    root = deployment.root()
    cases = {
        'flower_root': ({'flower_data_dir': root}, 'flower_data_dir'),
        'flower_confd': ({'flower_data_dir': root + '/conf.d'}, 'flower_data_dir'),
        'flower_above': ({'flower_data_dir': os.path.dirname(root)}, 'flower_data_dir'),
        'flower_dotdot': ({'flower_data_dir': root + '/flower/..'}, 'flower_data_dir'),
        'flower_db_out': ({'flower_db': root + '/flower.db'}, 'flower_db'),
        'beat_root': ({'beat_data_dir': root + '/'}, 'beat_data_dir'),
        'beat_log': ({'beat_data_dir': root + '/log'}, 'beat_data_dir'),
        'beat_file_out': ({'beat_schedule_file': root + '/celerybeat-schedule'}, 'beat_schedule_file'),
    }
    safe = {'flower_port': free_port(), 'flower_basic_auth': ['ops:pw'], 'flower_virtualenv': VENV,
            'flower_allow_root': True, 'beat_app': 'fleet_tasks', 'beat_allow_root': True,
            # every host runs beat: not the point here
            'beat_allow_multiple': True}
    # Every host shares localhost's supervisor root, so each case aims at the same real directories.
    host_vars = dict((host, dict(case[0], supervisor_root=root)) for host, case in cases.items())
    report = deployment.run(ROLES, safe, hosts=list(cases), host_vars=host_vars, check=True)
    assert deployment.last.returncode != 0
    for host, (_vars, variable) in cases.items():
        message = failure(report, host)
        assert variable in message and 'own directory' in message, (host, message)
    assert not os.path.exists(root)


# -- item 4: not as root unless told --------------------------------------------------------------

def test_flower_and_beat_do_not_run_as_root_unless_allowed(deployment):
    service = deployment.service
    # supervisord runs as root here (the tests run as root): a program without a user would too.
    cases = {
        'flower_nouser': ({'flower_user': '', 'beat_user': service.NAME}, 'flower', 'flower_user',
                          'flower_allow_root'),
        'flower_root': ({'flower_user': 'root', 'beat_user': service.NAME}, 'flower', 'flower_user',
                        'flower_allow_root'),
        'beat_nouser': ({'beat_user': '', 'flower_user': service.NAME}, 'celery-beat', 'beat_user',
                        'beat_allow_root'),
        'beat_uid0': ({'beat_user': '0', 'flower_user': service.NAME}, 'celery-beat', 'beat_user',
                      'beat_allow_root'),
    }
    # Play variables outrank the inventory's: the users come from the hosts alone.
    play_vars = dict(as_account(service, free_port()), beat_allow_multiple=True)
    del play_vars['flower_user'], play_vars['beat_user']
    report = deployment.run(ROLES, play_vars, hosts=list(cases), check=True,
                            host_vars=dict((host, case[0]) for host, case in cases.items()))
    assert deployment.last.returncode != 0
    for host, (_vars, program, user, allow) in cases.items():
        message = failure(report, host)
        assert '%s would run as root' % program in message and user in message and allow in message, (host, message)

    # Refused before anything is made for it.
    report = deployment.run(ROLES, dict(play_vars, flower_user='', beat_user=service.NAME))
    assert deployment.last.returncode != 0 and 'flower_allow_root' in failure(report)
    assert not os.path.exists(os.path.join(deployment.root(), 'flower'))
    assert os.listdir(os.path.join(deployment.root(), 'conf.d')) == []


# -- item 5: Flower's /metrics and /healthcheck need no login ----------------------------------------

def test_flower_off_loopback_needs_an_auth_proxy(deployment):
    port = free_port('0.0.0.0')
    secret = 'ops:pw-%d' % port
    flower_vars = {'flower_port': port, 'flower_basic_auth': [secret], 'flower_virtualenv': VENV,
                   'flower_allow_root': True}
    report = deployment.run(['celeryops.fleet.flower'], flower_vars)
    assert deployment.last.returncode == 0, failure(report)
    program = os.path.join(deployment.root(), 'conf.d', 'flower.conf')
    with open(program) as handle:
        before = handle.read()
    pid = deployment.pid('flower')
    with open('/proc/%d/status' % pid) as handle:  # allowed to, it runs as root
        assert [line.split()[1] for line in handle if line.startswith('Uid:')] == ['0']
    # Why: Flower asks for no credentials on these two, whatever its auth settings.
    assert http_status('http://127.0.0.1:%d/metrics' % port) == 200
    assert http_status('http://127.0.0.1:%d/healthcheck' % port) == 200
    assert http_status('http://127.0.0.1:%d/workers' % port) == 401

    # Another address is refused, and the running Flower is neither stopped nor rewritten.
    for bad in ({'flower_address': '0.0.0.0'}, {'flower_extra_args': ['--address=0.0.0.0']}):
        report = deployment.run(['celeryops.fleet.flower'], dict(flower_vars, **bad))
        assert deployment.last.returncode != 0
        message = failure(report)
        assert list(bad)[0] in message and 'flower_behind_auth_proxy' in message and '/metrics' in message, message
        assert deployment.pid('flower') == pid
        with open(program) as handle:
            assert handle.read() == before

    # Every non-loopback form is refused (check mode, one host each), loopback ones pass.
    bad = {'any4': '0.0.0.0', 'any6': '::', 'empty': '', 'lan': '10.1.2.3', 'lookalike': '127.0.0.1.example.com'}
    good = {'lo2': '127.3.2.1', 'lo6': '::1', 'localhost': 'localhost'}
    host_vars = dict((host, {'flower_address': address}) for host, address in dict(bad, **good).items())
    installed = dict(flower_vars, flower_virtualenv='', flower_celery_executable=VENV + '/bin/celery')
    report = deployment.run(['celeryops.fleet.flower'], installed, hosts=list(host_vars), host_vars=host_vars,
                            check=True)
    for host in bad:
        assert 'flower_address' in failure(report, host), host
    for host in good:
        assert stats(report, host)['failures'] == 0, failure(report, host)

    # The user says a proxy that asks for credentials stands in front: it deploys.
    report = deployment.run(['celeryops.fleet.flower'], dict(flower_vars, flower_address='0.0.0.0',
                                                             flower_behind_auth_proxy=True))
    assert deployment.last.returncode == 0, failure(report)
    assert '--address=0.0.0.0' in open(program).read() and deployment.pid('flower') != pid
    assert http_status('http://127.0.0.1:%d/workers' % port, secret) == 200
