"""celery_events_info against real Celery workers with and without task events, on Redis and RabbitMQ."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import RabbitBroker, RedisBroker, management, publish, worker_index

# What the module names its Redis connections and its queues (plugins/module_utils/_events.py).
CLIENT_NAME = 'celeryops.fleet.events'
QUEUE_PREFIX = 'celeryev.celeryops-fleet.'


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker(request):
    return request.getfixturevalue('redis_env' if request.param == 'redis' else 'rabbit_env')


def listening(broker):
    """Whether the module's listener is in place: events sent from now on reach it."""
    if isinstance(broker, RedisBroker):
        # Redis events are PUB/SUB: the listener's connection must have subscribed.
        return any(c.get('name') == CLIENT_NAME and int(c.get('psub', 0)) > 0 and int(c.get('db', -1)) == broker.db
                   for c in broker.client.client_list())
    try:
        bindings = management('GET', '/api/exchanges/%s/celeryev/bindings/source' % broker.qvhost)
    except urllib.error.HTTPError:
        return False
    return any(b['destination'].startswith(QUEUE_PREFIX) for b in bindings)


def leftovers(broker):
    """What a listener could leave behind: Redis keys, or the vhost's queues and celeryev bindings."""
    if isinstance(broker, RedisBroker):
        return sorted(broker.client.keys()), broker.client.zscore('_kombu.binding_deadlines', 'celeryev')
    queues = sorted(q['name'] for q in management('GET', '/api/queues/%s?columns=name' % broker.qvhost))
    try:
        bindings = management('GET', '/api/exchanges/%s/celeryev/bindings/source' % broker.qvhost)
    except urllib.error.HTTPError:
        bindings = []
    return queues, [b['destination'] for b in bindings]


class Window(object):
    """celery_events_info running in the background; ``result()`` waits for it."""

    def __init__(self, ansible, broker, **args):
        self.broker = broker
        self.pool = ThreadPoolExecutor(1)
        self.future = self.pool.submit(ansible.module, 'celery_events_info', dict(broker_url=broker.url, **args))

    def wait_listening(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.future.done():
                raise AssertionError('the module ended before listening: %r' % (self.future.result(),))
            if listening(self.broker):
                return self
            time.sleep(0.05)
        raise AssertionError('the module did not start listening in %ss' % timeout)

    def result(self):
        try:
            return self.future.result(timeout=120)
        finally:
            self.pool.shutdown()


def test_counts_failures_retries_and_a_killed_worker(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'ev@fleet', ['q1'], events=True)
    victim = workers.start(url, 'gone@fleet', ['other'], events=True, heartbeat_interval=1)
    before = leftovers(broker)

    window = Window(ansible, broker, duration=5).wait_listening()
    adds = publish(url, 'fleet_tasks.add', 'q1', args=(1, 2), count=3)
    fails = publish(url, 'fleet_tasks.fail', 'q1', args=('boom',), count=2)
    publish(url, 'fleet_tasks.flaky', 'q1', args=(1,))
    time.sleep(1.2)  # the victim has sent a heartbeat inside the window
    victim.kill()
    result = window.result()

    assert not result.get('failed'), result.get('msg')
    assert result['changed'] is False and result['ended'] == 'duration'
    assert 5 <= result['elapsed'] < 5 + 5, result['elapsed']  # ended by its duration, not by a later event
    assert dict((k, v) for k, v in result['counts'].items() if k.startswith('task-')) == {
        'task-received': 7, 'task-started': 7, 'task-succeeded': 4, 'task-failed': 2, 'task-retried': 1}
    zero = dict(received=0, started=0, succeeded=0, failed=0, retried=0, rejected=0, revoked=0)
    tasks = dict((name, dict((k, v) for k, v in counts.items() if k != 'runtime'))
                 for name, counts in result['tasks'].items())
    assert tasks == {
        'fleet_tasks.add': dict(zero, received=3, started=3, succeeded=3),
        'fleet_tasks.fail': dict(zero, received=2, started=2, failed=2),
        'fleet_tasks.flaky': dict(zero, received=2, started=2, succeeded=1, retried=1),
    }
    runtime = result['tasks']['fleet_tasks.add']['runtime']
    assert 0 <= runtime['min'] <= runtime['p50'] <= runtime['p95'] <= runtime['max'] < 5
    assert result['tasks']['fleet_tasks.fail']['runtime'] is None

    assert result['failures_total'] == 2
    assert sorted(f['uuid'] for f in result['failures']) == sorted(fails)
    for failure in result['failures']:
        assert failure['name'] == 'fleet_tasks.fail' and failure['hostname'] == 'ev@fleet'
        assert failure['exception'] == "FleetTaskError('boom')"
        assert failure['traceback'].startswith('File ') and failure['traceback'].endswith('in fail')
    assert result['failures'][0]['timestamp'] >= result['failures'][1]['timestamp']
    assert not set(adds) & set(f['uuid'] for f in result['failures'])

    alive, gone = result['workers']['ev@fleet'], result['workers']['gone@fleet']
    assert alive['online'] is True and alive['task_events'] is True and alive['freq'] == 2.0
    assert gone['online'] is False and gone['offline_reason'].startswith('no heartbeat for')
    assert gone['freq'] == 1.0
    assert result['offline'] == ['gone@fleet']
    assert result['hint'] is None
    if not isinstance(broker, RedisBroker):
        before[0].remove('gone@fleet.celery.pidbox')  # exclusive to the killed worker's connection
    assert leftovers(broker) == before


def test_task_events_off_gives_the_hint_and_ends_on_time(broker, ansible, workers):
    url = broker.url
    workers.start(url, 'quiet@fleet', ['q1'], heartbeat_interval=1)
    before = leftovers(broker)
    window = Window(ansible, broker, duration=3.5).wait_listening()
    # Heartbeats tell how many tasks a worker took: the tasks run between two of them.
    time.sleep(1.5)
    publish(url, 'fleet_tasks.add', 'q1', args=(1, 2), count=3)
    result = window.result()
    assert not result.get('failed'), result.get('msg')
    assert 3.5 <= result['elapsed'] < 3.5 + 5, result['elapsed']
    assert not [k for k in result['counts'] if k.startswith('task-')], result['counts']
    assert result['counts']['worker-heartbeat'] >= 2
    assert result['workers']['quiet@fleet']['task_events'] is False, (result['workers'], result['counts'])
    assert result['hint'].startswith('quiet@fleet ran tasks but sent no task events: task events are off (no -E)')
    assert 'celeryops.fleet.celery_worker (events: true)' in result['hint']
    assert result['hint'] in ' '.join(result['warnings'])
    assert leftovers(broker) == before


@pytest.mark.mitogen
def test_max_events_types_and_an_empty_broker(redis_env, ansible, workers):
    url = redis_env.url
    fresh = RabbitBroker('celeryops-test-events-%d-%d' % (worker_index(), os.getpid()))
    fresh.create()
    try:
        quiet, early, no_exchange = ansible.play([
            {'celeryops.fleet.celery_events_info': dict(broker_url=url, duration=1)},
            {'celeryops.fleet.celery_events_info': dict(broker_url=url, duration=1.5, max_events=1,
                                                        types=['worker-heartbeat'])},
            {'celeryops.fleet.celery_events_info': dict(broker_url=fresh.url, duration=30)},
        ])
        exchanges = [e['name'] for e in management('GET', '/api/exchanges/%s' % fresh.qvhost)]
    finally:
        fresh.delete()
    assert quiet['events'] == 0 and quiet['workers'] == {} and 1 <= quiet['elapsed'] < 1 + 5
    assert quiet['hint'].startswith('no events arrived: no worker sent even a heartbeat')
    # No worker: the window waits for a heartbeat until its end.
    assert early['ended'] == 'duration' and early['events'] == 0 and early['elapsed'] >= 1.5
    # A vhost where no worker ever sent an event: nothing to listen to, and nothing is created.
    assert no_exchange['ended'] == 'no_exchange' and no_exchange['elapsed'] < 5, no_exchange
    assert no_exchange['hint'].startswith('no events: the event exchange celeryev does not exist')
    assert 'celeryev' not in exchanges

    workers.start(url, 'ev@fleet', ['q1'], events=True, heartbeat_interval=1)
    window = Window(ansible, redis_env, duration=30, max_events=2, types=['task-failed']).wait_listening()
    publish(url, 'fleet_tasks.add', 'q1', args=(1, 2), count=2)
    fails = publish(url, 'fleet_tasks.fail', 'q1', args=('boom',), count=3)
    result = window.result()
    assert result['ended'] == 'max_events' and result['elapsed'] < 20
    assert result['counts'] == {'task-failed': 2} and result['events'] == 2
    assert result['tasks'] == {'fleet_tasks.fail': dict(received=0, started=0, succeeded=0, failed=2, retried=0,
                                                        rejected=0, revoked=0, runtime=None)}
    assert set(f['uuid'] for f in result['failures']) <= set(fails) and len(result['failures']) == 2
    assert result['workers']['ev@fleet']['task_events'] is True
    assert redis_env.client.keys('*celeryev*') == []


def module_process(parent):
    """The pid of the module run under the process ``parent``: the deepest python running its AnsiballZ file
    (on ansible-core 2.21 a second python, a child of the first, runs the module: signalling the first left the
    module listening and ansible waiting)."""
    children = {}
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/stat' % pid) as stat:
                ppid = int(stat.read().rsplit(')', 1)[1].split()[1])
            with open('/proc/%s/cmdline' % pid, 'rb') as cmdline:
                argv = cmdline.read()
        except OSError:
            continue
        children.setdefault(ppid, []).append((int(pid), argv))
    todo, found = [parent], None
    while todo:
        for pid, argv in children.get(todo.pop(), []):
            if any(arg.endswith(b'/AnsiballZ_celery_events_info.py') for arg in argv.split(b'\0')):
                found = pid  # python running the module (not the shell that started it)
            todo.append(pid)
    return found


def test_interrupted_window_leaves_nothing_behind(broker, workers):
    url = broker.url
    workers.start(url, 'ev@fleet', ['q1'], events=True)
    before = leftovers(broker)
    run = subprocess.Popen(['ansible', 'localhost', '-i', 'localhost,', '-c', 'local', '-o', '-m',
                            'celeryops.fleet.celery_events_info', '-a', 'broker_url=%s duration=120' % url],
                           env=dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not listening(broker) and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        assert listening(broker), run.communicate(timeout=10)[0] if run.poll() is not None else 'not listening'
        pid = module_process(run.pid)
        assert pid, 'no module process under ansible (pid %d)' % run.pid
        os.kill(pid, signal.SIGTERM)
        output = run.communicate(timeout=30)[0]
    finally:
        if run.poll() is None:
            run.kill()
    assert 'FAILED' in output and 'interrupted by signal %d while listening' % signal.SIGTERM in output, output
    assert leftovers(broker) == before
