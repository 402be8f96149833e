"""Real brokers, real Celery workers and real ansible-playbook runs for the integration tests.

Each xdist worker gets its own Redis database and RabbitMQ vhost, so suites can run in
parallel without seeing each other's queues.
"""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import redis

APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'app')
sys.path.insert(0, APP_DIR)

from fleet_tasks import make_app  # noqa: E402  (the test app lives beside this file)

CI = os.environ.get('CI') == 'true'
REDIS_HOST, REDIS_PORT = '127.0.0.1', 6379
AMQP_PORT = 5672
MANAGEMENT = 'http://127.0.0.1:15672'
GUEST = ('guest', 'guest')


def unwrapped(text):
    """Ansible's output with its line wrapping undone: ansible-core 2.16 wraps warnings at 80 columns (2.19+ do
    not), breaking lines at spaces and after hyphens, so every white space goes and expectations are compared so."""
    return ''.join(text.split())


def worker_index():
    name = os.environ.get('PYTEST_XDIST_WORKER', 'gw0')
    return int(name[2:]) if name.startswith('gw') and name[2:].isdigit() else 0


def require(ok, what):
    """A broker that is not there fails the test under CI=true, and skips it elsewhere."""
    if ok:
        return
    if CI:
        pytest.fail('%s is unreachable (CI=true: tests that need it fail instead of skipping)' % what)
    pytest.skip('%s is unreachable' % what)


# -- RabbitMQ management API ------------------------------------------------------------------

def management(method, path, body=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(MANAGEMENT + path, data=data, method=method)
    request.add_header('Authorization', 'Basic ' + base64.b64encode(('%s:%s' % GUEST).encode()).decode())
    request.add_header('content-type', 'application/json')
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read()
    return json.loads(text) if text else None


def management_up():
    try:
        management('GET', '/api/overview', timeout=3)
        return True
    except (OSError, urllib.error.URLError):
        return False


class RabbitBroker(object):
    def __init__(self, vhost):
        self.vhost = vhost
        self.qvhost = urllib.parse.quote(vhost, safe='')
        self.url = 'amqp://guest:guest@127.0.0.1:%d/%s' % (AMQP_PORT, self.qvhost)

    def create(self):
        management('PUT', '/api/vhosts/%s' % self.qvhost, {})
        management('PUT', '/api/permissions/%s/guest' % self.qvhost, {'configure': '.*', 'write': '.*', 'read': '.*'})

    def delete(self):
        try:
            management('DELETE', '/api/vhosts/%s' % self.qvhost)
        except urllib.error.HTTPError:
            pass

    def reset(self):
        for queue in management('GET', '/api/queues/%s?columns=name' % self.qvhost) or []:
            try:
                management('DELETE', '/api/queues/%s/%s' % (self.qvhost, urllib.parse.quote(queue['name'], safe='')))
            except urllib.error.HTTPError:
                pass

    def queue(self, name):
        return management('GET', '/api/queues/%s/%s' % (self.qvhost, urllib.parse.quote(name, safe='')))

    def read_ids(self, name, count=100000):
        """The task ids in a queue in delivery order, read and requeued (as rabbitmqadmin get does)."""
        got = management('POST', '/api/queues/%s/%s/get' % (self.qvhost, urllib.parse.quote(name, safe='')),
                         {'count': count, 'ackmode': 'ack_requeue_true', 'encoding': 'auto'})
        return [m['properties']['headers']['id'] for m in got]

    def messages(self, name):
        """Every ready message of a queue in delivery order, read and requeued: body (base64), AMQP properties
        (headers included), exchange and routing key. Not the redelivered flag, which reading sets."""
        got = management('POST', '/api/queues/%s/%s/get' % (self.qvhost, urllib.parse.quote(name, safe='')),
                         {'count': 1000000, 'ackmode': 'ack_requeue_true', 'encoding': 'base64'})
        return [dict((k, m[k]) for k in ('payload', 'payload_encoding', 'properties', 'exchange', 'routing_key'))
                for m in got]

    def snapshot(self, exclude=()):
        """queue name -> messages(name) for every queue of the vhost (but exclusive ones, which only their
        owner may read): exact content to compare before/after."""
        queues = management('GET', '/api/queues/%s?columns=name,exclusive' % self.qvhost) or []
        return dict((q['name'], self.messages(q['name'])) for q in queues
                    if q['name'] not in exclude and not q.get('exclusive'))

    def wait_for(self, name, predicate, timeout=60):
        """Poll the management API (its statistics lag) until predicate(record) holds."""
        deadline = time.monotonic() + timeout
        record = None
        while time.monotonic() < deadline:
            try:
                record = self.queue(name)
            except urllib.error.HTTPError:
                record = None
            if record is not None and predicate(record):
                return record
            time.sleep(0.5)
        queues = management('GET', '/api/queues/%s?columns=name,messages' % self.qvhost)
        raise AssertionError('queue %s never matched: last %r; the vhost %s has %r' % (name, record, self.vhost, queues))


class RedisBroker(object):
    def __init__(self, db):
        self.db = db
        self.url = 'redis://%s:%d/%d' % (REDIS_HOST, REDIS_PORT, db)
        self.client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=10)

    def snapshot(self, exclude=()):
        """key -> DUMP of every key of the database: byte-exact state to compare before/after."""
        out = {}
        for key in self.client.scan_iter(count=1000):
            if key not in exclude:
                out[key] = self.client.dump(key)
        return out


def redis_up():
    try:
        return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=3, socket_connect_timeout=3).ping()
    except redis.RedisError:
        return False


# -- publishing ------------------------------------------------------------------------------

_apps = {}


def celery_app(url, global_keyprefix=None):
    key = (url, global_keyprefix)
    if key not in _apps:
        app = _apps[key] = make_app(url, global_keyprefix)
        if not url.startswith('redis'):
            # Closing an app drops its connections without AMQP's close handshake, and RabbitMQ then
            # discards the publishes its channel had not yet routed: each publish waits for its confirm.
            app.conf.broker_transport_options = dict(app.conf.broker_transport_options, confirm_publish=True)
    return _apps[key]


def close_publishers():
    """Close every cached Celery app, and kombu's pools of the process with them.

    kombu keeps its connection and producer pools in a registry of the process, keyed by the
    broker URL, and a pooled connection remembers which queues it declared: closing an app
    alone leaves that connection behind, and a queue deleted since (by a test's reset) would
    never be declared again, its messages dropped.
    """
    from kombu import pools
    for key in list(_apps):
        _apps.pop(key).close()
    pools.reset()


def publish(url, task, queue, args=(), count=1, priority=None, global_keyprefix=None, **options):
    """Send ``count`` messages of ``task`` to ``queue``; returns their task ids in send order."""
    app = celery_app(url, global_keyprefix)
    ids = []
    with app.producer_or_acquire() as producer:
        for _index in range(count):
            result = app.send_task(task, args=args, queue=queue, priority=priority, producer=producer, **options)
            ids.append(result.id)
    return ids


def wait_for(probe, timeout=60, what='condition'):
    """probe()'s first true value, asked every 0.3 s; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError('timed out waiting for %s' % what)


def held_by_a_worker_gone(workers, broker, queue, node):
    """A task in kombu's unacked hash whose worker is gone: an ETA task the worker ``node`` took from ``queue``
    (Redis holds it there until the visibility timeout), then the worker killed. Returns the task ids."""
    worker = workers.start(broker.url, node, [queue])
    ids = publish(broker.url, 'fleet_tasks.add', queue, args=(1, 1), countdown=600)
    wait_for(lambda: broker.client.hlen('unacked') == 1, what='the ETA task to be held')
    worker.kill()
    return ids


def recorded(path):
    """Task ids a fleet_tasks.record file holds, one per run."""
    try:
        with open(path) as handle:
            return [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def account(submitted, executed):
    """(lost, duplicates) of a no-loss test: the submitted task ids that never ran, and id -> runs for those
    that ran more than once (Celery delivers at least once: tests report duplicates, they fail on loss)."""
    runs = {}
    for task_id in executed:
        runs[task_id] = runs.get(task_id, 0) + 1
    return (sorted(set(submitted) - set(runs)),
            dict((task_id, n) for task_id, n in sorted(runs.items()) if n > 1))


class TaskStream(object):
    """A thread submitting fleet_tasks.record to ``queues`` in turn until stop(), one in ten taking a while
    (so that workers hold prefetched messages at any moment); stop() returns every id submitted."""

    def __init__(self, url, queues, pause=0.01, slow=0.3):
        self.url, self.queues, self.pause, self.slow = url, queues, pause, slow
        self.submitted, self.errors = [], []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        index = 0
        while not self.stopping.is_set():
            seconds = self.slow if index % 10 == 0 else 0
            try:
                self.submitted.extend(publish(self.url, 'fleet_tasks.record', self.queues[index % len(self.queues)],
                                              args=(seconds,)))
            except Exception as exc:  # stop() fails with it: a stream that ended early proves little
                self.errors.append(repr(exc))
                return
            index += 1
            time.sleep(self.pause)

    def stop(self):
        self.stopping.set()
        self.thread.join(30)
        assert not self.errors, 'publishing failed: %s' % self.errors
        return self.submitted


# -- Celery workers --------------------------------------------------------------------------

class Worker(object):
    """A real `celery worker` process of the test app."""

    def __init__(self, url, name, queues, pool='threads', concurrency=2, prefetch=4, events=False,
                 global_keyprefix=None, logdir=None, autoscale=None, heartbeat_interval=None, config=(), python=None):
        self.url = url
        self.name = name
        self.queues = queues
        # One file per process: a node name can be started again (or twice).
        self.logfile = tempfile.mkstemp(prefix=name.replace('@', '_') + '-', suffix='.log',
                                        dir=logdir or tempfile.mkdtemp(prefix='celery-worker-'))[1]
        # python: another virtualenv's (the Celery-version matrix runs workers of each Celery 5.x)
        argv = [python or sys.executable, '-m', 'celery', '-A', 'fleet_tasks', 'worker', '-n', name, '-Q', ','.join(queues),
                '-P', pool, '--prefetch-multiplier', str(prefetch),
                '--without-mingle', '--without-gossip', '-l', 'INFO', '--logfile', self.logfile]
        if concurrency:
            argv += ['-c', str(concurrency)]
        if autoscale:
            argv += ['--autoscale', autoscale]
        if events:
            argv.append('-E')
        if heartbeat_interval:
            argv += ['--heartbeat-interval', str(heartbeat_interval)]
        if config:  # Celery settings on the command line, as `celery worker ... -- name=value` reads them
            argv += ['--'] + list(config)
        env = dict(os.environ, CELERY_BROKER_URL=url, PYTHONPATH=APP_DIR)
        if global_keyprefix:
            env['FLEET_KEYPREFIX'] = global_keyprefix
        self.process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def log(self):
        try:
            with open(self.logfile) as handle:
                return handle.read()
        except OSError:
            return ''

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ' ready.' in self.log():
                return self
            if self.process.poll() is not None:
                raise AssertionError('worker %s exited with %s:\n%s' % (self.name, self.process.returncode, self.log()))
            time.sleep(0.2)
        raise AssertionError('worker %s not ready after %ss:\n%s' % (self.name, timeout, self.log()))

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout=20):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


# -- Ansible ---------------------------------------------------------------------------------

class Ansible(object):
    """Runs tasks through ansible-playbook the way users do, and returns each task's result."""

    def __init__(self, tmpdir):
        self.tmpdir = tmpdir
        self.last = None

    def play(self, tasks, check=False, diff=False, verbosity=0, env=None, timeout=300, play_extra=None):
        play = dict(hosts='localhost', gather_facts=False, connection='local', tasks=[])
        play.update(play_extra or {})
        for task in tasks:
            task = dict(task)
            task.setdefault('ignore_errors', True)
            play['tasks'].append(task)
        path = os.path.join(self.tmpdir, 'play-%d.yml' % int(time.monotonic() * 1000000))
        with open(path, 'w') as handle:
            json.dump([play], handle)  # JSON is YAML
        argv = ['ansible-playbook', '-i', 'localhost,', path]
        if check:
            argv.append('--check')
        if diff:
            argv.append('--diff')
        if verbosity:
            argv.append('-' + 'v' * verbosity)
        report = self._run(argv, env, timeout)
        return [task['hosts']['localhost'] for task in report['plays'][0]['tasks']]

    def playbook(self, name, extra_vars=None, timeout=300, check=False):
        """A playbook of the collection (celeryops.fleet.NAME) run on localhost, as an operator runs it (with
        ``check``, as ansible-playbook --check); returns the results of its tasks by task name (a task's last result,
        for a loop or a retry)."""
        argv = ['ansible-playbook', '-i', 'localhost,', '-c', 'local', 'celeryops.fleet.' + name]
        if check:
            argv.append('--check')
        if extra_vars:
            argv += ['-e', json.dumps(extra_vars)]
        report = self._run(argv, None, timeout)
        return dict((task['task']['name'], task['hosts'].get('localhost', {}))
                    for play in report['plays'] for task in play['tasks'])

    def _run(self, argv, env, timeout):
        run_env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK='ansible.posix.json', ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                       ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_NOCOLOR='1', ANSIBLE_DEPRECATION_WARNINGS='false')
        run_env.update(env or {})
        started = time.monotonic()
        proc = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=timeout, check=False)
        self.last = dict(stdout=proc.stdout, stderr=proc.stderr, rc=proc.returncode,
                         seconds=time.monotonic() - started)
        # The JSON report comes last; at -v and more, Ansible's own lines come before it.
        text = proc.stdout
        start = 0 if text.startswith('{') else text.find('\n{\n') + 1
        try:
            report = json.loads(text[start:])
        except ValueError:
            raise AssertionError('ansible-playbook did not print JSON (rc %s):\n%s\n%s'
                                 % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
        self.last['report'] = report
        return report

    def task_spans(self):
        """(start, end) of each task of the last play, in epoch seconds, from the json callback's own
        times: the module's own time, without ansible-playbook's start-up."""
        from datetime import datetime

        def epoch(stamp):
            return datetime.fromisoformat(stamp.replace('Z', '+00:00')).timestamp()
        return [(epoch(task['task']['duration']['start']), epoch(task['task']['duration']['end']))
                for task in self.last['report']['plays'][0]['tasks']]

    def task_seconds(self):
        """Seconds each task of the last play took (see task_spans)."""
        return [end - start for start, end in self.task_spans()]

    def module(self, name, args, check=False, diff=False, **kwargs):
        """One module task; returns its result dict."""
        fqcn = name if '.' in name else 'celeryops.fleet.' + name
        return self.play([{fqcn: args}], check=check, diff=diff, **kwargs)[0]


# -- network helpers -------------------------------------------------------------------------

def free_port(address='127.0.0.1'):
    """A TCP port nothing listens on at ADDRESS right now."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def http_status(url, credentials=None):
    """The HTTP status of a GET, with "user:password" basic auth when given."""
    request = urllib.request.Request(url)
    if credentials:
        request.add_header('Authorization', 'Basic ' + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
