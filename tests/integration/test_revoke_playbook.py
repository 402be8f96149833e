"""celeryops.fleet.revoke run as an operator runs it (ansible-playbook celeryops.fleet.revoke, --check first), on Redis
with a real worker: check mode removes nothing and says what would go, the real run removes exactly the matching
messages and the worker lists their ids as revoked, a second run changes nothing, and no selector fails before
anything is sent."""

import json

import pytest

from harness import publish, wait_for


def queue_ids(broker, name):
    """The ids of a Redis queue's ready messages in run order (step 0: no priorities here)."""
    return [json.loads(raw)['headers']['id'] for raw in reversed(broker.client.lrange(name, 0, -1))]


def revoked_on(ansible, url, node, ids):
    """The ids of ``ids`` that ``node`` lists as revoked (celeryops.fleet.celery_worker_info)."""
    info = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=[node], include=['revoked'],
                                                     timeout=10))
    assert not info.get('failed') and node in info['workers'], info
    return sorted(set(ids) & set(info['workers'][node].get('revoked', [])))


@pytest.mark.mitogen
def test_revoke_shows_in_check_mode_then_revokes_exactly_the_selected_tasks(redis_env, ansible, workers):
    url = redis_env.url
    node = 'watch@revoke'
    workers.start(url, node, ['other'])
    kept, mail = [], []
    for index in range(3):
        kept += publish(url, 'fleet_tasks.add', 'target', args=(index, 1))
        mail += publish(url, 'fleet_tasks.mail', 'target', args=('user%d@example.com' % index,))
    bystander = publish(url, 'fleet_tasks.mail', 'bystander', args=('keep@example.com',), count=2)
    # As -e gives them: strings; the expected node as the inventory lists it, so a silent node would be named.
    extra = dict(celery_broker_url=url, celery_fleet_hosts='localhost', celery_expected_nodes=[node],
                 revoke_task_names='fleet_tasks.mail', revoke_queues='target')
    before = queue_ids(redis_env, 'target')

    # --check: says what would go, and removes or sends nothing.
    tasks = ansible.playbook('revoke', extra, check=True)
    assert ansible.last['rc'] == 0, ansible.last['stdout'][-3000:]
    plan = tasks['Find what would be revoked']
    assert plan['changed'] is True and sorted(plan['revoked']) == sorted(mail), plan
    assert sorted(plan['removed']['target']) == sorted(mail), plan
    printed = tasks['Print what would be revoked']['msg']
    assert printed[0] == 'would revoke 3 task ids: ' + ', '.join(plan['revoked']), printed
    assert printed[1] == 'would remove from the queues: target: 3', printed
    assert tasks['Revoke the tasks'].get('skipped') is True
    assert 'without --check' in tasks['Say that nothing was revoked in check mode']['msg']
    assert queue_ids(redis_env, 'target') == before
    assert revoked_on(ansible, url, node, mail) == []

    # The real run: the matching messages go (the others stay, in order), the worker lists the ids as revoked.
    tasks = ansible.playbook('revoke', extra)
    assert ansible.last['rc'] == 0, ansible.last['stdout'][-3000:]
    done = tasks['Revoke the tasks']
    assert done['changed'] is True and sorted(done['revoked']) == sorted(mail), done
    assert sorted(done['removed']['target']) == sorted(mail) and done['not_answering'] == [], done
    printed = tasks['Print what was revoked']['msg']
    assert printed[0] == 'revoked 3 task ids: ' + ', '.join(done['revoked']) and printed[1] == \
        'removed from the queues: target: 3', printed
    assert tasks['Name the nodes that did not answer (their revoke is not confirmed)'].get('skipped') is True
    assert queue_ids(redis_env, 'target') == kept
    assert queue_ids(redis_env, 'bystander') == bystander
    assert revoked_on(ansible, url, node, mail) == sorted(mail)

    # Nothing left to do.
    tasks = ansible.playbook('revoke', extra)
    assert ansible.last['rc'] == 0, ansible.last['stdout'][-3000:]
    again = tasks['Revoke the tasks']
    assert again['changed'] is False and again['revoked'] == [] and again['removed'] == {'target': []}, again
    assert queue_ids(redis_env, 'target') == kept


def test_revoke_by_id_names_the_expected_node_that_does_not_answer(redis_env, ansible, workers):
    url = redis_env.url
    workers.start(url, 'up@revoke', ['other'])
    ids = publish(url, 'fleet_tasks.add', 'offline', args=(1, 2), count=3)
    extra = dict(celery_broker_url=url, celery_fleet_hosts='localhost', celery_expected_nodes=['up@revoke', 'down@revoke'],
                 revoke_ids=[ids[1]], revoke_queues=['offline'], revoke_state='revoked')
    tasks = ansible.playbook('revoke', extra)
    assert ansible.last['rc'] == 0, ansible.last['stdout'][-3000:]
    done = tasks['Revoke the tasks']
    assert done['removed'] == {'offline': [ids[1]]} and done['not_answering'] == ['down@revoke'], done
    assert tasks['Name the nodes that did not answer (their revoke is not confirmed)']['msg'] == \
        'not answering: down@revoke'
    assert queue_ids(redis_env, 'offline') == [ids[0], ids[2]]


@pytest.mark.parametrize('selectors', [
    {},
    {'revoke_task_names': ''},
    {'revoke_ids': []},
    {'revoke_task_names': ['fleet_tasks.mail'], 'revoke_state': 'purged'},
    {'revoke_task_names': ['fleet_tasks.mail'], 'revoke_queues': []},
], ids=['none', 'empty-string', 'empty-list', 'bad-state', 'empty-queues'])
def test_no_selector_fails_before_anything_is_sent(redis_env, ansible, selectors):
    url = redis_env.url
    ids = publish(url, 'fleet_tasks.mail', 'target', args=('user@example.com',), count=2)
    before = redis_env.snapshot()
    tasks = ansible.playbook('revoke', dict(selectors, celery_broker_url=url, revoke_queues=['target'])
                             if 'revoke_queues' not in selectors else dict(selectors, celery_broker_url=url))
    assert ansible.last['rc'] != 0
    check = tasks['Check the selectors']
    assert check.get('failed') and 'revoke needs a selector' in check['msg'] and 'Nothing was sent' in check['msg'], check
    assert 'Find what would be revoked' not in tasks and 'Revoke the tasks' not in tasks, list(tasks)
    assert queue_ids(redis_env, 'target') == ids and redis_env.snapshot() == before


def test_revoke_state_terminated_stops_the_running_task(redis_env, ansible, workers):
    url = redis_env.url
    node = 'prefork@revoke'
    workers.start(url, node, ['run'], pool='prefork', concurrency=1)
    [running] = publish(url, 'fleet_tasks.sleep', 'run', args=(300,))

    def active():
        info = ansible.module('celery_task_info', dict(broker_url=url, ids=[running], expected_nodes=[node], timeout=10))
        return [t['id'] for t in info['tasks'] if t['where'] == 'active']
    wait_for(lambda: active() == [running], what='the task to run')
    extra = dict(celery_broker_url=url, celery_fleet_hosts='localhost', celery_expected_nodes=[node],
                 revoke_ids=running, revoke_state='terminated', revoke_timeout=10)
    tasks = ansible.playbook('revoke', extra, check=True)
    assert ansible.last['rc'] == 0, ansible.last['stdout'][-3000:]
    assert tasks['Find what would be revoked']['terminated'] == [running]
    assert tasks['Print what would be revoked']['msg'][2] == 'would terminate: ' + running
    assert active() == [running]

    tasks = ansible.playbook('revoke', extra)
    assert ansible.last['rc'] == 0, ansible.last['stdout'][-3000:]
    assert tasks['Revoke the tasks']['terminated'] == [running], tasks['Revoke the tasks']
    assert tasks['Print what was revoked']['msg'][2] == 'terminated: ' + running
    assert active() == []
