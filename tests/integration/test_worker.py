"""celery_worker (consuming, drained, stopped) against real Celery workers on Redis and RabbitMQ."""

import time

import pytest

from harness import TaskStream, account, publish, recorded

SLEEP = 'fleet_tasks.sleep'

# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def worker_state(ansible, url, node):
    result = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=[node],
                                                       include=['active_queues'], timeout=5))
    return result['workers'].get(node, {}).get('queues')


def test_consuming_check_mode_real_and_idempotent(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'cons@fleet', ['q1', 'q2'])
    args = dict(broker_url=url, nodes=['cons@fleet'], state='consuming', queues=['q1', 'q3'], exclusive=True)
    check = ansible.module('celery_worker', args, check=True)
    assert check['changed'] is True
    assert check['nodes']['cons@fleet']['actions'] == ['add_consumer q3', 'cancel_consumer q2']
    assert worker_state(ansible, url, 'cons@fleet') == ['q1', 'q2']  # check mode sent nothing

    real, again = ansible.play([{'celeryops.fleet.celery_worker': args}, {'celeryops.fleet.celery_worker': args}])
    assert real['changed'] is True, real
    assert real['nodes']['cons@fleet']['before']['queues'] == ['q1', 'q2']
    assert real['nodes']['cons@fleet']['after']['queues'] == ['q1', 'q3']
    assert again['changed'] is False and again['nodes']['cons@fleet']['actions'] == []
    assert worker_state(ansible, url, 'cons@fleet') == ['q1', 'q3']

    # Not exclusive: only adds.
    more = ansible.module('celery_worker', dict(broker_url=url, nodes=['cons@fleet'], state='consuming',
                                                queues=['q2']))
    assert more['nodes']['cons@fleet']['after']['queues'] == ['q1', 'q2', 'q3']


def eventually(predicate, timeout):
    """Whether ``predicate()`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_drain_stop_start_loses_no_task(broker, ansible, workers, tmp_path, monkeypatch, record_property):
    """Every worker drained, stopped and started again while tasks keep coming: every submitted task runs."""
    url = broker.url
    nodes = ['drain1@fleet', 'drain2@fleet']
    files = [str(tmp_path / 'ran-by-first.txt'), str(tmp_path / 'ran-by-second.txt')]

    def generation(index):
        monkeypatch.setenv('FLEET_RECORD_FILE', files[index])  # the workers' environment comes from ours
        started = [workers.start(url, node, ['work'], ready=False, concurrency=2, prefetch=4) for node in nodes]
        return [worker.wait_ready() for worker in started]

    first = generation(0)
    stream = TaskStream(url, ['work'])
    try:
        assert eventually(lambda: len(recorded(files[0])) >= 30, 60), 'the first workers ran nothing'
        drained = ansible.module('celery_worker', dict(broker_url=url, nodes=nodes, state='drained',
                                                       wait_timeout=120, wait_sleep=0.2))
        ran_when_drained = len(recorded(files[0]))
        assert not drained.get('failed'), drained
        for node in nodes:
            assert drained['nodes'][node]['actions'] == ['cancel_consumer work']
            assert drained['nodes'][node]['after'] == dict(queues=[], active=0, reserved=0, concurrency=2,
                                                           autoscale=None)
        again = ansible.module('celery_worker', dict(broker_url=url, nodes=nodes, state='drained'))
        assert again['changed'] is False

        stopped = ansible.module('celery_worker', dict(broker_url=url, nodes=nodes, state='stopped',
                                                       wait_timeout=60))
        assert stopped['changed'] is True and [stopped['nodes'][node]['after'] for node in nodes] == [None, None]
        assert [worker.process.wait(30) for worker in first] == [0, 0]
        gone = ansible.module('celery_worker', dict(broker_url=url, nodes=nodes, state='stopped'))
        assert gone['changed'] is False and gone['missing'] == nodes
        # Drained means drained: once the module said so, those workers ran nothing more.
        assert len(recorded(files[0])) == ran_when_drained

        # What the drained workers did not take waited in the queue; new workers run it, and what keeps coming.
        generation(1)
        assert eventually(lambda: len(recorded(files[1])) >= 30, 60), 'the second workers ran nothing'
    finally:
        submitted = stream.stop()
    eventually(lambda: set(submitted) <= set(recorded(files[0]) + recorded(files[1])), 90)
    lost, duplicates = account(submitted, recorded(files[0]) + recorded(files[1]))
    record_property('submitted', len(submitted))
    record_property('duplicates', duplicates)
    print('%d tasks submitted; ran more than once: %s' % (len(submitted), duplicates or 'none'))
    assert not lost, '%d of %d submitted tasks never ran: %s' % (len(lost), len(submitted), lost[:10])
    # A task run by both generations was held by a worker the module had called drained: it lost track.
    both = set(recorded(files[0])) & set(recorded(files[1]))
    assert not both, 'ran before the drain and again after the restart: %s' % sorted(both)


@pytest.mark.mitogen
def test_drain_timeout_reports_what_is_still_held(redis_env, ansible, workers):
    url = redis_env.url
    workers.start(url, 'busy@fleet', ['work'], concurrency=1, prefetch=2)
    publish(url, SLEEP, 'work', args=(30,), count=3)
    result = ansible.module('celery_worker', dict(broker_url=url, nodes=['busy@fleet'], state='drained',
                                                  wait_timeout=2, wait_sleep=0.3))
    assert result['failed']
    assert 'wait_timeout' in result['msg'] and 'busy@fleet' in result['msg']
    assert 'active fleet_tasks.sleep[' in result['msg']
    assert result['nodes']['busy@fleet']['after']['queues'] == []


def test_drain_of_a_live_and_an_absent_node_drains_one_and_names_the_other(broker, ansible, workers):
    """A node that does not answer is already drained: one call, no asking first who answers."""
    url = broker.url
    workers.start(url, 'live@fleet', ['q1', 'q2'])
    workers.start(url, 'bystander@fleet', ['q1'])
    drain = {'celeryops.fleet.celery_worker': dict(broker_url=url, nodes=['live@fleet', 'absent@fleet'],
                                                   state='drained', wait_timeout=60)}

    [check] = ansible.play([drain], check=True)
    assert check['changed'] is True and check['missing'] == ['absent@fleet'], check
    assert list(check['nodes']) == ['live@fleet'] and check['all_nodes'] is False
    assert check['nodes']['live@fleet']['actions'] == ['cancel_consumer q1', 'cancel_consumer q2']
    assert worker_state(ansible, url, 'live@fleet') == ['q1', 'q2']  # check mode sent nothing

    real, again = ansible.play([drain, drain])
    assert not real.get('failed') and real['changed'] is True and real['missing'] == ['absent@fleet'], real
    assert list(real['nodes']) == ['live@fleet'] and real['gone'] == []
    assert real['nodes']['live@fleet']['actions'] == ['cancel_consumer q1', 'cancel_consumer q2']
    assert real['nodes']['live@fleet']['after']['queues'] == []
    assert again['changed'] is False and again['missing'] == ['absent@fleet'], again
    assert again['nodes']['live@fleet']['actions'] == []
    [check_again] = ansible.play([drain], check=True)
    assert check_again['changed'] is False and check_again['missing'] == ['absent@fleet'], check_again
    assert worker_state(ansible, url, 'live@fleet') == [] and worker_state(ansible, url, 'bystander@fleet') == ['q1']

    # Nobody answering (names or patterns): nothing to drain, no change, in check mode or not.
    nobody = dict(broker_url=url, nodes=['absent@fleet', 'nowhere@*'], state='drained')
    for checked in (True, False):
        result = ansible.module('celery_worker', nobody, check=checked)
        assert not result.get('failed') and result['changed'] is False, result
        assert result['missing'] == ['absent@fleet', 'nowhere@*'] and result['nodes'] == {}


def test_bad_input_on_a_live_fleet(redis_env, ansible, workers):
    """What only a broker and a worker can refuse (the option matrix is in test_bad_input.py)."""
    url = redis_env.url
    workers.start(url, 'here@fleet', ['q1'])
    cases = [
        (dict(broker_url=url, nodes=['gone@fleet'], state='consuming', queues=['q1']),
         'nodes not online (state consuming needs them answering): gone@fleet'),
        (dict(broker_url=url, nodes=['here@fleet', 'gone@fleet'], state='drained', concurrency=3),
         'nodes not online (state drained with concurrency needs them answering): gone@fleet'),
        (dict(broker_url='redis://127.0.0.1:1/0', state='stopped'), 'redis 127.0.0.1:1 db 0'),
        (dict(broker_url=url, nodes=['here@fleet'], concurrency=3), 'pool_grow on here@fleet failed'),
    ]
    results = ansible.play([{'celeryops.fleet.celery_worker': args} for args, _expected in cases])
    for (args, expected), result in zip(cases, results):
        assert result.get('failed'), (args, result)
        assert expected in result['msg'], (args, result['msg'])
        assert 'Traceback' not in result['msg']
    assert worker_state(ansible, url, 'here@fleet') == ['q1']


def test_concurrency_autoscale_and_events(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'pool@fleet', ['q1'], pool='prefork', concurrency=2)
    workers.start(url, 'scale@fleet', ['q1'], pool='prefork', concurrency=None, autoscale='3,1')
    grow = dict(broker_url=url, nodes=['pool@fleet'], concurrency=3)
    check = ansible.module('celery_worker', grow, check=True)
    assert check['nodes']['pool@fleet']['actions'] == ['pool_grow 1']
    assert check['nodes']['pool@fleet']['after']['concurrency'] == 2
    real, again = ansible.play([{'celeryops.fleet.celery_worker': dict(grow, wait_timeout=60)},
                                {'celeryops.fleet.celery_worker': grow}])
    assert real['changed'] and real['nodes']['pool@fleet']['after']['concurrency'] == 3, real
    assert again['changed'] is False
    shrink = ansible.module('celery_worker', dict(grow, concurrency=1, wait_timeout=60))
    assert shrink['nodes']['pool@fleet']['actions'] == ['pool_shrink 2']
    assert shrink['nodes']['pool@fleet']['after']['concurrency'] == 1

    scale = dict(broker_url=url, nodes=['scale@fleet'], autoscale=[4, 2])
    first, second = ansible.play([{'celeryops.fleet.celery_worker': scale}, {'celeryops.fleet.celery_worker': scale}])
    assert first['changed'] and first['nodes']['scale@fleet']['before']['autoscale'] == [3, 1], first
    assert first['nodes']['scale@fleet']['after']['autoscale'] == [4, 2]
    assert second['changed'] is False
    refused = ansible.module('celery_worker', dict(broker_url=url, nodes=['pool@fleet'], autoscale=[4, 2]))
    assert refused['failed'] and 'runs without --autoscale' in refused['msg']

    events = dict(broker_url=url, nodes=['pool@fleet'], events=True)
    on, again_on = ansible.play([{'celeryops.fleet.celery_worker': events}, {'celeryops.fleet.celery_worker': events}])
    assert on['changed'] is True and on['nodes']['pool@fleet']['actions'] == ['enable_events']
    assert again_on['changed'] is False and again_on['nodes']['pool@fleet']['actions'] == []


def test_rate_and_time_limits_read_back_set_where_they_differ_and_refused_when_bad(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'limits@fleet', ['q1'])
    limits = dict(broker_url=url, nodes=['limits@fleet'], rate_limits={'fleet_tasks.add': '10/m', 'fleet_tasks.mail': None},
                  time_limits={'fleet_tasks.sleep': {'soft': 5, 'hard': 10}}, wait_timeout=30)
    unset = dict(rate_limits={'fleet_tasks.add': None, 'fleet_tasks.mail': None},
                 time_limits={'fleet_tasks.sleep': dict(soft=None, hard=None)})

    check = ansible.module('celery_worker', limits, check=True)
    assert check['changed'] is True, check
    node = check['nodes']['limits@fleet']
    assert node['actions'] == ['rate_limit fleet_tasks.add 10/m', 'time_limit fleet_tasks.sleep 5.0 10.0']
    assert node['before'] == node['after'] and dict((k, node['before'][k]) for k in unset) == unset

    real, again = ansible.play([{'celeryops.fleet.celery_worker': limits}, {'celeryops.fleet.celery_worker': limits}])
    assert not real.get('failed') and real['changed'] is True, real
    # Check mode sent nothing: the real run found the limits unset still.
    assert dict((k, real['nodes']['limits@fleet']['before'][k]) for k in unset) == unset
    assert real['nodes']['limits@fleet']['after']['rate_limits'] == {'fleet_tasks.add': '10/m', 'fleet_tasks.mail': None}
    assert real['nodes']['limits@fleet']['after']['time_limits'] == {'fleet_tasks.sleep': dict(soft=5.0, hard=10.0)}
    assert any('last until the worker restarts' in w for w in real.get('warnings', [])), real
    assert again['changed'] is False and again['nodes']['limits@fleet']['actions'] == [], again
    assert not any('last until the worker restarts' in w for w in again.get('warnings', []))

    # The same rate written another way is the same rate; lifting the limits is a change, confirmed.
    same = ansible.module('celery_worker', dict(limits, rate_limits={'fleet_tasks.add': '600/h'}, time_limits=None))
    assert same['changed'] is False, same
    lifted = ansible.module('celery_worker', dict(limits, **unset))
    assert lifted['changed'] is True and lifted['nodes']['limits@fleet']['actions'] == [
        'rate_limit fleet_tasks.add none', 'time_limit fleet_tasks.sleep none none'], lifted
    assert dict((k, lifted['nodes']['limits@fleet']['after'][k]) for k in unset) == unset

    bad = [
        (dict(limits, rate_limits={'fleet_tasks.add': '10/x'}), "rate_limits: fleet_tasks.add: '10/x' is not a rate"),
        (dict(limits, time_limits={'fleet_tasks.sleep': {'soft': -1}}), 'time_limits: fleet_tasks.sleep: soft must be more than 0'),
        (dict(limits, rate_limits={'fleet_tasks.nope': '1/s'}),
         'rate_limits: fleet_tasks.nope not registered on limits@fleet, so its limits cannot be set'),
        (dict(limits, rate_limits=None, time_limits={'fleet_tasks.nope': None, 'fleet_tasks.add': None}),
         'time_limits: fleet_tasks.nope not registered on limits@fleet'),
        (dict(limits, state='stopped'), 'state: stopped goes with neither rate_limits nor time_limits'),
    ]
    results = ansible.play([{'celeryops.fleet.celery_worker': args} for args, _expected in bad])
    for (args, expected), result in zip(bad, results):
        assert result.get('failed') and expected in result['msg'], (args, result)
        assert 'Traceback' not in result['msg']
    # Nothing was set by the refused runs: the limits are still lifted (nor did the stop stop anything).
    after = ansible.module('celery_worker', dict(limits, **unset), check=True)
    assert after['changed'] is False, after


@pytest.mark.mitogen
def test_restarted_pool_where_allowed_and_refused_where_not(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'restartable@fleet', ['q1'], pool='prefork', concurrency=2, config=['worker_pool_restarts=True'])
    workers.start(url, 'fixed@fleet', ['q1'], pool='prefork', concurrency=2)
    workers.start(url, 'threads@fleet', ['q1'], pool='threads', concurrency=2, config=['worker_pool_restarts=True'])
    restart = dict(broker_url=url, nodes=['restartable@fleet'], state='restarted_pool', wait_timeout=60)

    check = ansible.module('celery_worker', restart, check=True)
    assert check['changed'] is True and check['nodes']['restartable@fleet']['actions'] == ['pool_restart'], check
    pids = check['nodes']['restartable@fleet']['before']['pool_processes']
    assert len(pids) == 2

    real = ansible.module('celery_worker', restart)
    assert not real.get('failed') and real['changed'] is True, real
    assert real['nodes']['restartable@fleet']['before']['pool_processes'] == pids  # check mode restarted nothing
    after = real['nodes']['restartable@fleet']['after']['pool_processes']
    # One process is replaced at once; the other, idle, waits for its next task before it sees the restart.
    assert len(after) == 2 and set(after) != set(pids) and set(after) & set(pids), real
    # Tasks that overlap, so that the busy new process cannot take them all: the old one takes one, then leaves.
    publish(url, SLEEP, 'q1', args=(0.5,), count=8)

    def replaced():
        state = ansible.module('celery_worker', restart, check=True)['nodes']['restartable@fleet']['before']
        return len(state['pool_processes']) == 2 and not set(state['pool_processes']) & set(pids)
    assert eventually(replaced, 60), 'the pool processes of before still run after 8 overlapping tasks'
    after = ansible.module('celery_worker', restart, check=True)['nodes']['restartable@fleet']['before']['pool_processes']

    refused = ansible.play([{'celeryops.fleet.celery_worker': dict(restart, nodes=nodes)}
                            for nodes in (['restartable@fleet', 'fixed@fleet'], ['threads@fleet'])])
    assert refused[0]['failed'] and 'fixed@fleet does not allow pool restarts' in refused[0]['msg'], refused[0]
    assert 'worker_pool_restarts is not set' in refused[0]['msg']
    assert refused[1]['failed'] and 'threads@fleet runs a pool without processes' in refused[1]['msg'], refused[1]
    # Refused before anything was sent: the allowed node of the same call kept its processes.
    again = ansible.module('celery_worker', restart, check=True)
    assert again['nodes']['restartable@fleet']['before']['pool_processes'] == after
