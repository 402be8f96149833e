"""health_check with health_check_max_task_runtime: an active task running longer is unhealthy, named with its node,
task, id and runtime (real worker, both brokers, the playbook run as an operator runs it)."""

import re
import time

import pytest

from harness import publish


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def running(ansible, url, node, task_id, timeout=30):
    """Wait until ``node`` reports ``task_id`` active."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=[node], include=['active']))
        if any(task.get('id') == task_id for task in info['workers'].get(node, {}).get('active', [])):
            return
        time.sleep(0.5)
    raise AssertionError('%s never ran %s' % (node, task_id))


def test_a_task_running_longer_than_max_task_runtime_fails_the_health_check_by_name(broker, ansible, workers, tmp_path):
    url = broker.url
    workers.start(url, 'slow@fleet', ['work'])
    [task_id] = publish(url, 'fleet_tasks.sleep', 'work', args=(40,))
    running(ansible, url, 'slow@fleet', task_id)
    time.sleep(2)
    fleet = dict(celery_fleet_hosts='localhost', celery_expected_nodes=['slow@fleet'], celery_broker_url=url)
    junit = str(tmp_path / 'health.xml')

    tasks = ansible.playbook('health_check', dict(fleet, health_check_max_task_runtime=1, health_check_junit_file=junit))
    assert ansible.last['rc'] != 0, ansible.last['stdout'][-3000:]
    message = tasks['Fail naming what is unhealthy']['msg']
    found = re.search(r'slow@fleet \(host localhost\): task fleet_tasks\.sleep\[%s\] running for ([0-9.]+) s, more than 1 s'
                      % task_id, message)
    assert found and 2 <= float(found.group(1)) < 40, message
    table = tasks['Print the fleet summary']['msg']
    assert any(line.startswith('task fleet_tasks.sleep[%s] on slow@fleet: running for' % task_id) for line in table), table
    with open(junit) as handle:
        report = handle.read()
    assert 'classname="tasks" name="slow@fleet fleet_tasks.sleep[%s]"' % task_id in report and 'failures="1"' in report

    # Under the limit (given as -e gives it, a string), the same fleet is healthy.
    tasks = ansible.playbook('health_check', dict(fleet, health_check_max_task_runtime='600'))
    assert ansible.last['rc'] == 0, (tasks.get('Fail naming what is unhealthy'), ansible.last['stdout'][-2000:])
