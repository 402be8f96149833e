"""Hostile and unlucky input to the supervisor and worker roles, through ansible-playbook as users run them.

A value that would rewrite a program file is refused before anything is written, stopped or removed; a
deploy that failed half way is finished by the next run; programs do not run as root unless allowed.
"""

import os
import time

from harness import APP_DIR, celery_app, publish
from test_roles import deployment, failure, results, service_account, stats, worker  # noqa: F401 (fixtures)  # pylint: disable=unused-import

PROGRAM = 'celery-worker-victim'


def program_file(deployment, program=PROGRAM):
    return os.path.join(deployment.root(), 'conf.d', program + '.conf')


def read(path):
    with open(path) as handle:
        return handle.read()


def process_uid(pid):
    """The real uid of a process, from /proc/<pid>/status."""
    with open('/proc/%d/status' % pid) as handle:
        return int([line for line in handle if line.startswith('Uid:')][0].split()[1])


def environ(pid):
    with open('/proc/%d/environ' % pid, 'rb') as handle:
        return handle.read().split(b'\0')


def test_values_that_would_rewrite_a_program_file_are_refused_before_anything_changes(deployment):
    owned = os.path.join(deployment.base, 'owned')
    inject = "\ncommand=/bin/sh -c 'id > %s'\nx=" % owned
    victim = deployment.worker('victim', ['adv_victim'], environment={'FLEET_NOTE': 'calm'})
    report = deployment.run(['celeryops.fleet.worker'], {'celery_workers': [victim]})
    assert deployment.last.returncode == 0, failure(report)
    before, pid = read(program_file(deployment)), deployment.pid(PROGRAM)
    # It runs as the service account, not as root (supervisord does).
    assert process_uid(pid) == deployment.service.uid

    def hostile(**changes):
        environment = dict(victim['environment'], **changes.pop('environment', {}))
        return {'celery_workers': [dict(victim, environment=environment, **changes)]}

    cases = {
        'queue_newline': (hostile(queues=['q1' + inject]), 'celery_workers[victim].queues', r"'\n'"),
        'environment_cr': (hostile(environment={'FLEET_NOTE': inject.replace('\n', '\r')}),
                           'celery_workers[victim].environment', r"'\r'"),
        'queue_comment': (hostile(queues=['q2 ;eu']), 'celery_workers[victim].queues', "' ;'"),
        'user_newline': (hostile(user=victim['user'] + inject), 'celery_workers[victim].user', r"'\n'"),
        'workdir_comment': (hostile(workdir=APP_DIR + ' #x'), 'celery_workers[victim].workdir', "' #'"),
        'extra_args_escape': (hostile(extra_args=['--without-gossip', '\x1b[2J']), 'celery_workers[victim].extra_args',
                              r"'\x1b'"),
        'environment_here': (hostile(environment={'FLEET_NOTE': '%(here)s/x'}), 'celery_workers[victim].environment',
                             '%(here)s'),
        'environment_tab_hash': (hostile(environment={'FLEET_NOTE': 'a\t#b'}), 'celery_workers[victim].environment',
                                 r"'\t#'"),
        'environment_edge_quote': (hostile(environment={'FLEET_NOTE': "'quoted'"}),
                                   'supervisor_program_environment.FLEET_NOTE', 'single quote at either end'),
    }
    # One run, one host per case, every host on the supervisord that runs the victim: each stops on its own error.
    shared = {'supervisor_root': deployment.root(), 'worker_drain_timeout': 5, 'worker_wait_timeout': 5}
    report = deployment.run(['celeryops.fleet.worker'], hosts=list(cases),
                            host_vars=dict((host, dict(shared, **case[0])) for host, case in cases.items()))
    assert deployment.last.returncode != 0
    for host, (_vars, variable, refused) in cases.items():
        message = failure(report, host)
        assert 'supervisor program %s' % PROGRAM in message and variable in message and refused in message, \
            (host, message)
        assert 'calm' not in message and deployment.broker_url not in message, message
    # Nothing reached a file, the victim was neither drained nor restarted, and nothing injected ran.
    assert read(program_file(deployment)) == before
    assert deployment.pid(PROGRAM) == pid
    assert not os.path.exists(owned)
    assert os.listdir(os.path.join(deployment.root(), 'conf.d')) == [PROGRAM + '.conf']
    assert not results(report, 'Drain victim@')


def test_a_deploy_that_failed_half_way_is_finished_by_the_next_run(deployment):
    # prefork, one process: a task still running when the drain times out can be ended from here.
    slow = deployment.worker('slow', ['adv_slow'], pool='prefork', concurrency=1,
                             environment={'FLEET_NOTE': 'password-1'})
    roles = ['celeryops.fleet.worker']
    report = deployment.run(roles, {'celery_workers': [slow]})
    assert deployment.last.returncode == 0, failure(report)
    pid = deployment.pid('celery-worker-slow')

    app = celery_app(deployment.broker_url)
    [task] = publish(deployment.broker_url, 'fleet_tasks.sleep', 'adv_slow', args=(600,))
    deadline = time.monotonic() + 60
    while not any(running['id'] == task for running in
                  (app.control.inspect(destination=['slow@localhost'], timeout=2).active() or {}).get(
                      'slow@localhost', [])):
        assert time.monotonic() < deadline, 'the sleep task never started'
        time.sleep(0.5)

    # A rotated password: the file is written, then the drain fails (the task outlasts it); the old worker runs on.
    rotated = dict(slow, environment=dict(slow['environment'], FLEET_NOTE='password-2'))
    report = deployment.run(roles, {'celery_workers': [rotated], 'worker_drain_timeout': 1})
    assert deployment.last.returncode != 0
    assert 'Report a failed drain' in failure(report)
    assert 'FLEET_NOTE="password-2"' in read(program_file(deployment, 'celery-worker-slow'))
    assert deployment.pid('celery-worker-slow') == pid

    # The next run finds the file as it should be, but supervisord still running the old one: it finishes the
    # deploy, through the drain.
    app.control.revoke(task, terminate=True)
    report = deployment.run(roles, {'celery_workers': [rotated]})
    assert deployment.last.returncode == 0, failure(report)
    drain = results(report, 'Drain slow@localhost')
    assert drain and drain[0].get('skipped') is not True, drain
    new_pid = deployment.pid('celery-worker-slow')
    assert new_pid != pid
    assert b'FLEET_NOTE=password-2' in environ(new_pid)
    assert 'password-2' not in deployment.last.stdout

    report = deployment.run(roles, {'celery_workers': [rotated]})
    assert deployment.last.returncode == 0 and stats(report)['changed'] == 0, stats(report)
    assert deployment.pid('celery-worker-slow') == new_pid


def test_programs_do_not_run_as_root_unless_allowed(deployment):
    roles = ['celeryops.fleet.worker']
    # supervisord runs as root here (the tests run as root): a worker without a user would too.
    cases = {
        'nouser': worker('nouser', ['adv_root']),
        'rootuser': worker('rootuser', ['adv_root'], user='root'),
        'uidzero': worker('uidzero', ['adv_root'], user='0'),
    }
    report = deployment.run(roles, hosts=list(cases), check=True,
                            host_vars=dict((host, {'celery_workers': [case]}) for host, case in cases.items()))
    assert deployment.last.returncode != 0
    for host in cases:
        message = failure(report, host)
        assert 'celery-worker-%s would run as root' % host in message, message
        assert 'celery_workers[%s].user' % host in message and 'worker_allow_root' in message, message

    # Allowed explicitly, it runs as root.
    report = deployment.run(roles, {'celery_workers': [cases['nouser']], 'worker_allow_root': True})
    assert deployment.last.returncode == 0, failure(report)
    assert process_uid(deployment.pid('celery-worker-nouser')) == 0


def test_queue_names_with_a_comma_are_refused(deployment):
    report = deployment.run(['celeryops.fleet.worker'], check=True,
                            play_vars={'celery_workers': [deployment.worker('comma', ['fine', 'a,b'])]})
    assert deployment.last.returncode != 0
    message = failure(report)
    assert 'celery_workers[comma].queues' in message and "'a,b'" in message and '--queues' in message, message
