"""health_check_broker_findings and health_check_max_findings: the health check asks celeryops.fleet.celery_broker_info
about the broker's hygiene, judges the kinds given a limit, and writes a line, a JUnit case and a metric per kind
(issue 19), on real workers on Redis and RabbitMQ, through ansible-playbook."""

import xml.etree.ElementTree as ET

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import publish


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def findings_metric(path):
    """kind -> value of celery_broker_findings, as Prometheus reads the file."""
    with open(path) as handle:
        families = list(text_string_to_metric_families(handle.read()))
    return dict((sample.labels['kind'], sample.value) for family in families for sample in family.samples
                if sample.name == 'celery_broker_findings')


def test_findings_over_their_limit_fail_the_health_check_and_every_kind_is_a_metric(broker, ansible, workers, tmp_path):
    url = broker.url
    workers.start(url, 'hcf-a@fleet', ['hcf_work'])
    publish(url, 'fleet_tasks.add', 'hcf_nobody', args=(1, 2), count=3)  # ready messages no worker consumes
    if not url.startswith('redis'):  # the management API's counts lag the queue by its statistics interval
        broker.wait_for('hcf_nobody', lambda q: q.get('messages_ready') == 3)
    fleet = dict(celery_fleet_hosts='localhost', celery_expected_nodes=['hcf-a@fleet'], celery_broker_url=url)
    junit, prom = str(tmp_path / 'health.xml'), str(tmp_path / 'health.prom')

    tasks = ansible.playbook('health_check', dict(fleet, health_check_max_findings={'no_consumer': 0},
                                                  health_check_junit_file=junit, health_check_prometheus_file=prom))
    assert ansible.last['rc'] != 0, ansible.last['stdout'][-3000:]
    asked = tasks['Ask the broker about its hygiene']
    nobody = [f for f in asked['findings'] if f['kind'] == 'no_consumer']
    assert [f['name'] for f in nobody] == ['hcf_nobody'], asked['findings']
    count = asked['summary']['no_consumer']
    message = tasks['Fail naming what is unhealthy']['msg']
    assert 'broker no_consumer: %d found, more than 0' % count in message, message
    assert 'hcf-a@fleet' not in message  # the node itself is fine
    table = tasks['Print the fleet summary']['msg']
    assert 'broker no_consumer: %d found - %d found, more than 0' % (count, count) in table, table
    cases = dict((case.get('name'), case) for case in ET.parse(junit).getroot().iter('testcase')
                 if case.get('classname') == 'broker')
    assert set(cases) == set(asked['summary']), (cases, asked['summary'])
    assert cases['no_consumer'].find('failure') is not None
    assert all(case.find('failure') is None for kind, case in cases.items() if kind != 'no_consumer')
    # Every kind checked is a series, 0 included, with the module's count.
    assert findings_metric(prom) == dict((kind, float(n)) for kind, n in asked['summary'].items())

    # Asked without limits: reported, never judged.
    tasks = ansible.playbook('health_check', dict(fleet, health_check_broker_findings=True))
    assert ansible.last['rc'] == 0, (tasks.get('Fail naming what is unhealthy'), ansible.last['stdout'][-2000:])
    assert any(line.startswith('broker no_consumer: ') for line in tasks['Print the fleet summary']['msg'])

    # A kind misspelt, or not checked on this broker, fails naming it, rather than never firing.
    tasks = ansible.playbook('health_check', dict(fleet, health_check_max_findings={'no_consumers': 0}))
    assert ansible.last['rc'] != 0
    failed = [result.get('msg', '') for result in tasks.values() if result.get('failed')]
    assert any('max_findings names kinds celery_broker_info did not check on this broker: no_consumers' in msg
               for msg in failed), failed
