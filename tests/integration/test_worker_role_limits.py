"""The worker role's rate_limits, time_limits and pool_restarts: given to Celery at start (task_annotations and
worker_pool_restarts after --), so that a restart keeps what celery_worker sets at run time (real workers under
supervisor, through ansible-playbook)."""

import os

from test_roles import deployment, failure, service_account, stats, worker  # noqa: F401 (fixtures)  # pylint: disable=unused-import

LIMITS = dict(rate_limits={'fleet_tasks.add': '10/m', 'fleet_tasks.mail': None},
              time_limits={'fleet_tasks.sleep': {'soft': 5, 'hard': 10}})


def read_limits(ansible, url, node, check=True, **limits):
    """celery_worker with the limits the role was given (or ``limits``): in check mode, what would change."""
    args = dict(broker_url=url, nodes=[node], wait_timeout=30, **(limits or LIMITS))
    return ansible.module('celery_worker', args, check=check)


def test_role_limits_hold_from_the_start_and_after_a_restart(deployment, ansible):  # noqa: F811
    workers = [deployment.worker('limited', ['roles_limits'], pool='prefork', concurrency=1, pool_restarts=True, **LIMITS)]
    report = deployment.run(['celeryops.fleet.worker'], {'celery_workers': workers})
    assert deployment.last.returncode == 0, failure(report)
    program = os.path.join(deployment.root(), 'conf.d', 'celery-worker-limited.conf')
    with open(program) as handle:
        text = handle.read()
    assert "-- 'task_annotations=(json){" in text and 'worker_pool_restarts=True' in text, text

    # What the workers run with is what the role was given: nothing to set.
    node = 'limited@localhost'
    read = read_limits(ansible, deployment.broker_url, node)
    assert not read.get('failed') and read['changed'] is False, read
    assert read['nodes'][node]['before']['rate_limits'] == {'fleet_tasks.add': '10/m', 'fleet_tasks.mail': None}
    assert read['nodes'][node]['before']['time_limits'] == {'fleet_tasks.sleep': dict(soft=5.0, hard=10.0)}

    # Changed at run time, the limits are gone after a restart, back to what the role gives.
    changed = read_limits(ansible, deployment.broker_url, node, check=False, rate_limits={'fleet_tasks.add': '1/s'})
    assert changed['changed'] is True and any('last until the worker restarts' in w for w in changed['warnings'])
    deployment.supervisorctl('restart', 'celery-worker-limited')
    ready = ansible.module('celery_worker_info', dict(broker_url=deployment.broker_url, expected_nodes=[node], wait=True,
                                                      wait_timeout=60, include=['ping']))
    assert ready['missing'] == [], ready
    assert read_limits(ansible, deployment.broker_url, node)['changed'] is False

    # pool_restarts: the role's worker allows state restarted_pool.
    restarted = ansible.module('celery_worker', dict(broker_url=deployment.broker_url, nodes=[node], state='restarted_pool',
                                                     wait_timeout=60))
    assert not restarted.get('failed') and restarted['changed'] is True, restarted

    # The same deploy again changes nothing.
    report = deployment.run(['celeryops.fleet.worker'], {'celery_workers': workers})
    assert deployment.last.returncode == 0 and stats(report)['changed'] == 0, stats(report)


BAD_LIMITS = {
    'badrate': ([worker('r', ['q'], rate_limits={'fleet_tasks.add': '10/x'})],
                "celery_workers[r].rate_limits: fleet_tasks.add: '10/x' is not a rate"),
    'zerorate': ([worker('z', ['q'], rate_limits={'fleet_tasks.add': '0/m'})],
                 "celery_workers[z].rate_limits: fleet_tasks.add: '0/m' is not a rate"),
    'negative': ([worker('n', ['q'], time_limits={'fleet_tasks.add': {'soft': -1}})],
                 'celery_workers[n].time_limits: fleet_tasks.add: soft must be a number of seconds over 0'),
    'softhard': ([worker('s', ['q'], time_limits={'fleet_tasks.add': {'soft': 20, 'hard': 10}})],
                 'celery_workers[s].time_limits: fleet_tasks.add: soft (20) is more than hard (10)'),
    'badkey': ([worker('k', ['q'], time_limits={'fleet_tasks.add': {'sfot': 1}})],
               'celery_workers[k].time_limits: fleet_tasks.add must be {soft: seconds, hard: seconds}'),
    'threads': ([worker('t', ['q'], pool='threads', pool_restarts=True)],
                'celery_workers[t].pool_restarts needs the prefork pool'),
}


def test_bad_limits_are_refused_naming_the_worker_and_setting(deployment):  # noqa: F811
    report = deployment.run(['celeryops.fleet.worker'], hosts=list(BAD_LIMITS), check=True,
                            host_vars=dict((host, {'celery_workers': case[0]}) for host, case in BAD_LIMITS.items()))
    assert deployment.last.returncode != 0
    for host, (_workers, expected) in BAD_LIMITS.items():
        message = failure(report, host)
        assert expected in message, (host, message)
