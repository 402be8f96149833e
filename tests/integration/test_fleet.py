"""The fleet playbooks on a real fleet: three hosts (this machine, and two over real SSH), each with its own
supervisord and two Celery workers deployed by the roles, on a RabbitMQ vhost of this module's own.

The fleet is built once for the module and every test leaves it healthy; scripts/test runs this file in a
pytest process of its own, beside the other integration tests (xdist would build one fleet per worker).
Playbooks run as users run them: ansible-playbook celeryops.fleet.<name>.
"""

import os
import re
import signal
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from fleet import VENV, Fleet
from harness import (APP_DIR, RabbitBroker, TaskStream, account, close_publishers, free_port, http_status, management_up, publish,
                     require)

FLOWER_AUTH = 'ops:fl0wer-%d' % os.getpid()
PROGRAMS = ('celery-worker-alpha', 'celery-worker-beta')


@pytest.fixture(scope='module')
def fleet_broker():
    require(management_up(), 'RabbitMQ (management API at 127.0.0.1:15672)')
    broker = RabbitBroker('celeryops-fleet-%d' % os.getpid())
    broker.create()
    yield broker
    close_publishers()
    broker.delete()


@pytest.fixture(scope='module')
def fleet(fleet_broker):
    fleet = Fleet(fleet_broker.url, APP_DIR)
    try:
        fleet.flower_port = free_port('127.0.0.2')
        flower = dict(name='Flower on fleet2', hosts='fleet2', gather_facts=False, roles=['celeryops.fleet.flower'],
                      vars={'flower_address': '127.0.0.2', 'flower_port': fleet.flower_port,
                            'flower_basic_auth': [FLOWER_AUTH], 'flower_virtualenv': VENV, 'flower_allow_root': True})
        report = fleet.deploy([flower])
        assert report.rc == 0, report.failures() or fleet.last.stderr[-3000:]
        yield fleet
    finally:
        fleet.close()


def summary(report):
    """The fleet summary table of a health_check run: node -> its row (host, status, queues, active, depth)."""
    lines = report.results('Print the fleet summary')[0]['msg']
    header = lines[0].split()
    assert header == ['HOST', 'NODE', 'STATUS', 'QUEUES', 'ACTIVE', 'DEPTH'], lines
    rows = {}
    for line in lines[1:]:
        if line.startswith(('queue ', 'UNHEALTHY ')):
            continue
        cells = re.split(r'\s{2,}', line)
        rows[cells[1]] = dict(zip(['host', 'status', 'queues', 'active', 'depth'], [cells[0]] + cells[2:]))
    return rows


def health_check(fleet, **extra):
    return fleet.playbook('celeryops.fleet.health_check', extra)


def wait_healthy(fleet, timeout=60):
    """Until every node of the fleet answers and consumes its queues (a test may have stopped some)."""
    deadline = time.monotonic() + timeout
    while True:
        report = health_check(fleet)
        if report.rc == 0 or time.monotonic() > deadline:
            assert report.rc == 0, report.failures()
            return
        time.sleep(1)


def pids(fleet):
    return dict(((host, program), fleet.pid(host, program)) for host in fleet.hosts for program in PROGRAMS)


def test_roles_deploy_over_ssh_and_health_check_passes(fleet, tmp_path):
    # fleet2 and fleet3 really are reached over SSH: their supervisord was started in an SSH session.
    for host, address in (('fleet2', '127.0.0.2'), ('fleet3', '127.0.0.3')):
        with open('/proc/%d/environ' % fleet.supervisord_pid(host), 'rb') as handle:
            environ = dict(item.split(b'=', 1) for item in handle.read().split(b'\0') if b'=' in item)
        assert environ[b'SSH_CONNECTION'].split()[2] == address.encode()
    assert 'RUNNING' in fleet.supervisorctl('fleet1', 'status', 'celery-worker-alpha')

    junit = str(tmp_path / 'health.xml')
    report = health_check(fleet, health_check_junit_file=junit)
    assert report.rc == 0, report.failures()
    rows = summary(report)
    assert sorted(rows) == sorted(fleet.nodes())
    assert rows['beta@fleet3'] == dict(host='fleet3', status='ok', queues='fleet_beta,fleet_shared', active='0',
                                       depth='0')
    assert all(row['status'] == 'ok' for row in rows.values()), rows
    # One question for the whole fleet, asked from the controller, not one per host.
    asked = report.tasks('Ask every worker of the fleet at once')
    assert len(asked) == 1 and asked[0][2]['count'] == 6
    suite = ET.parse(junit).getroot().find('testsuite')
    assert (suite.get('tests'), suite.get('failures')) == ('9', '0')  # 6 nodes, 3 queues
    assert sorted(case.get('name') for case in suite.iter('testcase') if case.get('classname') != 'queues') == \
        sorted(fleet.nodes())

    # A hundred hosts cost what three cost: the 97 extra ones (unreachable addresses) are never connected to.
    extra = dict(('idle%02d' % index, {'ansible_host': '198.51.100.%d' % index, 'celery_expected_nodes': []})
                 for index in range(97))
    small = fleet.last.seconds
    big = fleet.playbook('celeryops.fleet.health_check', {'health_check_timeout': 3},
                         inventory=fleet.inventory(extra_hosts=extra))
    assert big.rc == 0, big.failures()
    assert big.stats()['idle96']['unreachable'] == 0
    assert len(big.tasks('Ask every worker of the fleet at once')) == 1
    assert fleet.last.seconds < 2 * small + 10, (small, fleet.last.seconds)


def test_a_killed_worker_and_a_full_queue_fail_the_health_check_by_name(fleet, fleet_broker, tmp_path):
    publish(fleet_broker.url, 'fleet_tasks.add', 'fleet_idle', args=(1, 2), count=5)
    victim = fleet.pid('fleet3', 'celery-worker-beta')
    supervisord = fleet.supervisord_pid('fleet3')
    # Freeze fleet3's supervisord so it cannot start the worker again before the check has run.
    os.kill(supervisord, signal.SIGSTOP)
    try:
        os.killpg(victim, signal.SIGKILL)
        junit = str(tmp_path / 'health.xml')
        report = health_check(fleet, health_check_junit_file=junit, health_check_queues=['fleet_idle'],
                              health_check_queue_max_messages={'fleet_idle': 2}, health_check_timeout=3)
    finally:
        os.kill(supervisord, signal.SIGCONT)
    assert report.rc != 0
    message = report.results('Fail naming what is unhealthy')[0]['msg']
    assert 'beta@fleet3 (host fleet3): not answering' in message, message
    assert 'queue fleet_idle: 5 ready messages, more than 2' in message, message
    assert 'alpha@fleet3' not in message and 'fleet2' not in message
    rows = summary(report)
    assert rows['beta@fleet3']['status'] == 'not answering' and rows['alpha@fleet3']['status'] == 'ok'
    failed = [(case.get('classname'), case.get('name')) for case in ET.parse(junit).getroot().iter('testcase')
              if case.find('failure') is not None]
    assert sorted(failed) == [('fleet3', 'beta@fleet3'), ('queues', 'fleet_idle')]
    assert fleet.broker_url not in fleet.last.stdout + fleet.last.stderr

    # supervisord, thawed, starts the worker again.
    wait_healthy(fleet)


def test_an_unreachable_broker_fails_the_health_check_with_a_junit_error(fleet, tmp_path):
    junit = str(tmp_path / 'health.xml')
    report = health_check(fleet, celery_broker_url='amqp://guest:n0t-shown@127.0.0.1:1//', health_check_junit_file=junit)
    assert report.rc != 0
    message = report.results('Fail with the broker error')[0]['msg']
    assert message.startswith('Celery fleet health unknown: ') and '127.0.0.1:1' in message, message
    error = ET.parse(junit).getroot().find('testsuite/testcase/error')
    assert error.get('message') in message
    assert 'n0t-shown' not in fleet.last.stdout + fleet.last.stderr + open(junit).read()


def test_drain_and_stop_are_idempotent_and_rolling_restart_brings_the_host_back(fleet):
    def drain(**extra):
        return fleet.playbook('celeryops.fleet.drain', extra, limit='fleet3')

    # Check mode says what it would do and sends nothing (the real drain below still has work to do).
    checked = fleet.playbook('celeryops.fleet.drain', {'drain_stop': True}, limit='fleet3', check=True)
    assert checked.rc == 0 and checked.results('Drain the nodes')[0]['changed'] is True, checked.failures()
    assert 'RUNNING' in fleet.supervisorctl('fleet3', 'status', 'celery-worker-alpha')

    report = drain()
    assert report.rc == 0, report.failures()
    assert report.results('Drain the nodes')[0]['changed'] is True
    assert drain().stats()['fleet3']['changed'] == 0

    # Drained nodes still answer but consume nothing: the health check names them; the others are fine.
    checked = health_check(fleet)
    assert checked.rc != 0
    rows = summary(checked)
    assert rows['alpha@fleet3']['status'] == 'not consuming fleet_alpha'
    assert rows['beta@fleet3']['status'] == 'not consuming fleet_beta,fleet_shared'
    assert [node for node, row in rows.items() if row['status'] != 'ok'] == ['alpha@fleet3', 'beta@fleet3']

    report = drain(drain_stop=True)
    assert report.rc == 0, report.failures()
    assert 'STOPPED' in fleet.supervisorctl('fleet3', 'status', 'celery-worker-alpha')
    again = drain(drain_stop=True)
    assert again.rc == 0 and again.stats()['fleet3']['changed'] == 0, again.failures()
    assert 'alpha@fleet3, beta@fleet3' in again.results('Name the nodes that do not answer')[0]['msg']

    # The rolling restart starts the stopped programs and waits until they consume again.
    report = fleet.playbook('celeryops.fleet.rolling_restart', limit='fleet3')
    assert report.rc == 0, report.failures()
    back = report.results('Wait until the nodes answer and consume')[0]
    assert back['missing'] == [] and {'alpha@fleet3', 'beta@fleet3'} <= set(back['online'])
    assert back['workers']['beta@fleet3']['queues'] == ['fleet_beta', 'fleet_shared']


def test_rolling_restart_under_load_runs_every_task(fleet, fleet_broker, record_property):
    before = pids(fleet)
    stream = TaskStream(fleet_broker.url, ['fleet_alpha', 'fleet_beta', 'fleet_shared'], pause=0.02)
    try:
        report = fleet.playbook('celeryops.fleet.rolling_restart')
    finally:
        submitted = stream.stop()
    assert report.rc == 0, report.failures()
    restarted = [host for _name, host, _result in report.tasks('Restart the worker programs')]
    assert restarted == ['fleet1', 'fleet2', 'fleet3']  # one host at a time, in inventory order
    after = pids(fleet)
    assert all(after[key] and after[key] != before[key] for key in before), (before, after)

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not set(submitted) <= set(fleet.executed()):
        time.sleep(0.5)
    lost, duplicates = account(submitted, fleet.executed())
    # Celery delivers at least once: a task run twice (a redelivery) is reported, a task never run fails.
    record_property('submitted', len(submitted))
    record_property('duplicates', duplicates)
    print('%d tasks submitted during the rolling restart; ran more than once: %s'
          % (len(submitted), duplicates or 'none'))
    assert len(submitted) > 100
    assert not lost, '%d of %d submitted tasks never ran: %s' % (len(lost), len(submitted), lost[:10])


def test_rolling_restart_stops_at_the_first_host_that_does_not_come_back(fleet):
    before = pids(fleet)
    # fleet2 is expected to bring up a node that will never answer; fleet1 is left out (--limit).
    workers = fleet.workers('fleet2')
    workers[0]['node'] = 'alpha@nowhere'
    inventory = fleet.inventory(overrides={'fleet2': {'celery_workers': workers}})
    report = fleet.playbook('celeryops.fleet.rolling_restart', {'rolling_restart_wait_timeout': 6},
                            inventory=inventory, limit='fleet2,fleet3')
    assert report.rc != 0
    message = report.results('Stop the rolling restart')[-1]['msg']
    assert message.startswith('fleet2 did not come back after the restart: alpha@nowhere (fleet2) does not answer')
    assert message.endswith('The rolling restart stops here; not restarted: fleet3'), message
    restarted = [host for _name, host, _result in report.tasks('Restart the worker programs')]
    assert restarted == ['fleet2']
    after = pids(fleet)
    assert after[('fleet2', 'celery-worker-beta')] != before[('fleet2', 'celery-worker-beta')]
    for host in ('fleet1', 'fleet3'):
        assert [after[(host, p)] for p in PROGRAMS] == [before[(host, p)] for p in PROGRAMS]
    wait_healthy(fleet)


def queued(fleet, queue):
    report = fleet.playbook('celeryops.fleet.queue_report', {'queue_report_queues': [queue]})
    return report.results('Describe the queues')[0]['queues'][0]['messages']


def test_purge_without_confirmation_removes_nothing(fleet, fleet_broker):
    publish(fleet_broker.url, 'fleet_tasks.add', 'fleet_purge', args=(1, 1), count=7)
    report = fleet.playbook('celeryops.fleet.purge', {'purge_queues': ['fleet_purge']})
    assert report.rc == 0, report.failures()
    assert report.results('Print what would go')[0]['msg'] == ['fleet_purge: would remove 7 of 7 ready messages']
    assert report.results('Purge the queues')[0].get('skipped') is True
    assert queued(fleet, 'fleet_purge') == 7

    report = fleet.playbook('celeryops.fleet.purge', {'purge_queues': ['fleet_purge'], 'purge_confirm': True})
    assert report.rc == 0, report.failures()
    assert report.results('Print what went')[0]['msg'] == ['fleet_purge: removed 7']
    assert queued(fleet, 'fleet_purge') == 0

    bad = fleet.playbook('celeryops.fleet.purge', {'purge_queues': 'fleet_purge'})
    assert bad.rc != 0 and 'purge_queues must list the queues' in bad.failures()[0]


def test_flower_on_a_fleet_host_answers_with_auth_only(fleet):
    url = 'http://127.0.0.2:%d/api/workers' % fleet.flower_port
    assert http_status(url) == 401
    assert http_status(url, 'ops:wrong') == 401
    assert http_status(url, FLOWER_AUTH) == 200


def test_health_check_event_window_names_failed_tasks(fleet, fleet_broker):
    # The role starts the workers with task events; tasks fail while the window is open.
    stop = threading.Event()

    def fail_tasks():
        while not stop.wait(0.5):
            publish(fleet_broker.url, 'fleet_tasks.fail', 'fleet_alpha', args=('on purpose',))

    thread = threading.Thread(target=fail_tasks, daemon=True)
    thread.start()
    try:
        report = health_check(fleet, health_check_events=True, health_check_events_window=6)
    finally:
        stop.set()
        thread.join(30)
    assert report.rc != 0
    message = report.results('Fail naming what is unhealthy')[0]['msg']
    assert re.search(r'\d+ task\(s\) failed in the last 6 s: fleet_tasks\.fail on alpha@fleet\d', message), message
