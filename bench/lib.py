"""Shared pieces of the benchmarks: settings, timing, real Celery envelopes, broker set-up.

Run by bench/run (never imported by the collection). Every benchmark script writes one JSON
file into $BENCH_OUT; bench/report.py turns them into bench/RESULTS.md.

    python bench/lib.py setup | cleanup | envelope-check
"""

import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
APP_DIR = os.path.join(ROOT, 'tests', 'integration', 'app')
PLAYBOOKS = os.path.join(BENCH, 'playbooks')

QUICK = os.environ.get('BENCH_QUICK') == '1'
REPEAT = int(os.environ.get('BENCH_REPEAT') or (3 if QUICK else 5))
OUT = os.environ.get('BENCH_OUT') or '/tmp/celeryops-bench'
os.makedirs(OUT, exist_ok=True)

REDIS_HOST, REDIS_PORT = '127.0.0.1', 6379
REDIS_DB = int(os.environ.get('BENCH_REDIS_DB', '5'))
REDIS_URL = 'redis://%s:%d/%d' % (REDIS_HOST, REDIS_PORT, REDIS_DB)
VHOST = os.environ.get('BENCH_VHOST', 'celeryops-bench')
QVHOST = urllib.parse.quote(VHOST, safe='')
AMQP_URL = 'amqp://guest:guest@127.0.0.1:5672/%s' % QVHOST
MANAGEMENT = 'http://127.0.0.1:15672'
GUEST = ('guest', 'guest')
SEP = '\x06\x16'
STATE = os.path.join(os.environ.get('CELERYOPS_CACHE') or os.path.expanduser('~/.cache/celeryops-fleet'), 'bench')
SLOWLOG_SAVED = os.path.join(STATE, 'slowlog-config.json')  # Redis settings to put back, kept across a crash
MARKER = 'celeryops-bench:owner'  # set in the bench database so cleanup never flushes someone else's

# Task names and arguments of the synthetic backlog: (name, args, kwargs, share of messages).
TASK_MIX = (
    ('fleet_tasks.add', (2, 3), {}, 0.40),
    ('fleet_tasks.mail', ('ops@example.com',), {'subject': 'Nightly report', 'template': 'report_v2'}, 0.25),
    ('billing.tasks.charge_invoice', (), {'invoice_id': 918273, 'currency': 'EUR', 'amount_cents': 129900}, 0.15),
    ('reports.tasks.render_pdf', ('monthly', 2024, 11), {'locale': 'en_GB'}, 0.12),
    ('media.tasks.resize_image', ('uploads/2024/11/23/IMG_0042.jpg',), {'sizes': [64, 256, 1024]}, 0.08),
)


def log(msg):
    sys.stderr.write('    %s\n' % msg)
    sys.stderr.flush()


# -- numbers -----------------------------------------------------------------------------------

def summary(values):
    """median, min, max and every value of a list of measurements."""
    values = list(values)
    return dict(median=statistics.median(values), min=min(values), max=max(values), n=len(values),
                values=[round(v, 6) for v in values])


def write_result(name, data):
    os.makedirs(OUT, exist_ok=True)
    data = dict(data, section=name, quick=QUICK, repeat=REPEAT)
    with open(os.path.join(OUT, name + '.json'), 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)


def show(argv, env=None):
    """A command as one would type it from the repository root."""
    words = ['%s=%s' % (k, shlex.quote(v)) for k, v in sorted((env or {}).items())]
    words += [shlex.quote(os.path.relpath(a, ROOT)) if os.path.isabs(a) and a.startswith(ROOT + '/') else shlex.quote(a)
              for a in argv]
    return ' '.join(words)


def timed(argv, env=None, cwd=ROOT, stdin=None, check=True):
    """Run a command; (seconds of wall time, stdout)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    start = time.perf_counter()
    proc = subprocess.run(argv, env=full_env, cwd=cwd, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False)
    seconds = time.perf_counter() - start
    if check and proc.returncode != 0:
        raise RuntimeError('%s failed (%d): %s %s' % (
            show(argv, env), proc.returncode, proc.stdout.decode('utf-8', 'replace')[-2000:],
            proc.stderr.decode('utf-8', 'replace')[-2000:]))
    return seconds, proc.stdout


# -- ansible-playbook --------------------------------------------------------------------------

PLAYBOOK_ENV = {
    # Same settings for every run: our timing callback on top of the default output.
    'ANSIBLE_CALLBACK_PLUGINS': os.path.join(BENCH, 'callback_plugins'),
    'ANSIBLE_CALLBACKS_ENABLED': 'bench_timer',
}


def playbook_argv(playbook, extra_vars=None):
    argv = ['ansible-playbook', '-i', 'localhost,', '-c', 'local', os.path.join(PLAYBOOKS, playbook)]
    if extra_vars:
        argv += ['-e', json.dumps(extra_vars, separators=(',', ':'))]
    return argv


def run_playbook(playbook, extra_vars=None, env=None):
    """One ansible-playbook run: (wall seconds, the one task's record from the bench_timer callback)."""
    seconds, tasks = run_playbook_tasks(playbook, extra_vars, env)
    if len(tasks) != 1:
        raise RuntimeError('%s: expected one ok task, got %r' % (playbook, tasks))
    return seconds, tasks[0]


def run_playbook_tasks(playbook, extra_vars=None, env=None):
    """One ansible-playbook run: (wall seconds, the records of the tasks that ran, all of them ok)."""
    timer_file = os.path.join(OUT, 'timer-%d.json' % os.getpid())
    env = dict(PLAYBOOK_ENV, BENCH_TIMER_FILE=timer_file, **(env or {}))
    if os.path.exists(timer_file):
        os.unlink(timer_file)
    seconds, _out = timed(playbook_argv(playbook, extra_vars), env=env)
    with open(timer_file) as f:
        tasks = [task for task in json.load(f)['tasks'] if task['status'] != 'skipped']
    os.unlink(timer_file)
    if not tasks or any(task['status'] != 'ok' for task in tasks):
        raise RuntimeError('%s: expected ok tasks, got %r' % (playbook, tasks))
    return seconds, tasks


def playbook_command(playbook, extra_vars=None):
    env = {'ANSIBLE_CALLBACK_PLUGINS': 'bench/callback_plugins', 'ANSIBLE_CALLBACKS_ENABLED': 'bench_timer'}
    return show(playbook_argv(playbook, extra_vars), env)


# -- Redis -------------------------------------------------------------------------------------

def redis_client(db=REDIS_DB):
    import redis
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=60)


def pick_task(rnd):
    """A task name drawn by the shares of TASK_MIX."""
    x = rnd.random()
    for name, _args, _kwargs, share in TASK_MIX:
        x -= share
        if x < 0:
            return name
    return TASK_MIX[0][0]


class Envelopes(object):
    """Real Celery envelopes, copied with fresh ids.

    One message per task of TASK_MIX (and one at priority 5) is published by Celery itself
    to a probe queue of the bench database; its JSON text becomes a template in which the
    task id (id, root_id, correlation_id) and the delivery tag are replaced per copy.
    The binding sets kombu wrote for the probe queue are kept as the pattern for SADD.
    """

    PROBE = 'bench.envelope-probe'

    def __init__(self):
        sys.path.insert(0, APP_DIR)
        from fleet_tasks import make_app  # the integration tests' app; celery is imported here, in the bench only
        client = redis_client()
        app = make_app(REDIS_URL)
        self.templates = {}
        try:
            for name, args, kwargs, _share in TASK_MIX:
                for priority in (0, 5):
                    app.send_task(name, args=args, kwargs=kwargs, queue=self.PROBE, priority=priority)
                    step = 0 if priority < 3 else 3
                    key = self.PROBE + (SEP + str(step) if step else '')
                    raw = client.rpop(key).decode('utf-8')
                    self.templates[(name, step)] = self._template(raw)
            self.binding_keys = {}
            for key in client.scan_iter(match='_kombu.binding*', count=1000):
                members = client.smembers(key)
                k = key.decode()
                if k.endswith('.' + self.PROBE):
                    self.binding_keys[k[:-len(self.PROBE)]] = sorted(m.decode() for m in members)
        finally:
            for key in client.scan_iter(match='*' + self.PROBE + '*', count=1000):
                client.delete(key)
            app.close()
        # kombu's member for a queue bound to its own exchange: routing_key + sep + '' + sep + queue
        expected = [self.PROBE + SEP + '' + SEP + self.PROBE]
        for prefix, members in self.binding_keys.items():
            if members != expected:
                raise AssertionError('kombu wrote %r in %s%s, expected %r' % (members, prefix, self.PROBE, expected))
        if '_kombu.binding.' not in self.binding_keys:
            raise AssertionError('kombu wrote no _kombu.binding.<queue> set: %r' % self.binding_keys)
        self.run = '%08x' % random.getrandbits(32)
        self.counter = 0

    def _template(self, raw):
        envelope = json.loads(raw)
        task_id = envelope['headers']['id']
        tag = envelope['properties']['delivery_tag']
        assert envelope['headers']['root_id'] == task_id == envelope['properties']['correlation_id']
        text = raw.replace('%', '%%').replace(self.PROBE, '%(queue)s').replace(task_id, '%(id)s')
        return text.replace(tag, '%(tag)s')

    def make(self, queue, task, step=0):
        self.counter += 1
        n = self.counter
        uid = '%s-%04x-4%03x-a%03x-%012x' % (self.run, (n >> 40) & 0xffff, (n >> 28) & 0xfff, (n >> 16) & 0xfff, n)
        tag = '%s-%04x-4%03x-b%03x-%012x' % (self.run, (n >> 40) & 0xffff, (n >> 28) & 0xfff, (n >> 16) & 0xfff, n)
        return self.templates[(task, step)] % {'queue': queue, 'id': uid, 'tag': tag}

    def bind(self, pipe, queue):
        """SADD the binding members exactly as kombu does for a queue on its own exchange."""
        for prefix in self.binding_keys:
            pipe.sadd(prefix + queue, queue + SEP + '' + SEP + queue)

    task_for = staticmethod(pick_task)


def key_of(queue, step):
    return queue + (SEP + str(step) if step else '')


def fill_backlog(client, envelopes, queue, total, step_share=0.1, seed=1, batch=1000):
    """LPUSH ``total`` envelopes to a queue (a share of them at priority step 3), pipelined.

    Returns {task: count} and the mean element size in bytes.
    """
    rnd = random.Random(seed)
    counts, size = {}, 0
    pipe = client.pipeline(transaction=False)
    pending = {0: [], 3: []}
    for i in range(total):
        task = envelopes.task_for(rnd)
        step = 3 if rnd.random() < step_share else 0
        raw = envelopes.make(queue, task, step)
        size += len(raw)
        counts[task] = counts.get(task, 0) + 1
        pending[step].append(raw)
        if len(pending[step]) >= batch:
            pipe.lpush(key_of(queue, step), *pending[step])
            pending[step] = []
            if len(pipe) >= 20:
                pipe.execute()
    for step, values in pending.items():
        if values:
            pipe.lpush(key_of(queue, step), *values)
    envelopes.bind(pipe, queue)
    pipe.execute()
    return counts, size / float(total or 1)


# -- RabbitMQ ----------------------------------------------------------------------------------

def management(method, path, body=None, timeout=30):
    """The RabbitMQ management API as guest, the same helper the integration tests use."""
    sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
    from harness import management as call  # pylint: disable=import-error
    return call(method, path, body, timeout=timeout)


def amqp_connection():
    import pika
    params = pika.ConnectionParameters(host='127.0.0.1', port=5672, virtual_host=VHOST,
                                       credentials=pika.PlainCredentials(*GUEST), heartbeat=0)
    return pika.BlockingConnection(params)


class AmqpEnvelopes(object):
    """One real Celery message per task of TASK_MIX, published by Celery to RabbitMQ and read back
    with basic_get, then republished with pika with fresh ids (same headers, properties, body)."""

    PROBE = 'bench.envelope-probe'

    def __init__(self):
        sys.path.insert(0, APP_DIR)
        from fleet_tasks import make_app
        app = make_app(AMQP_URL)
        self.messages = {}
        self.queue_arguments = None
        try:
            for name, args, kwargs, _share in TASK_MIX:
                app.send_task(name, args=args, kwargs=kwargs, queue=self.PROBE)
        finally:
            app.close()
        record = management('GET', '/api/queues/%s/%s' % (QVHOST, urllib.parse.quote(self.PROBE, safe='')))
        self.queue_arguments = record.get('arguments') or {}
        self.durable = record.get('durable', True)
        connection = amqp_connection()
        try:
            channel = connection.channel()
            for _task in TASK_MIX:
                method, properties, body = channel.basic_get(self.PROBE, auto_ack=True)
                self.messages[properties.headers['task']] = (properties, body)
            channel.queue_delete(self.PROBE)
        finally:
            connection.close()
        self.run = '%08x' % random.getrandbits(32)
        self.counter = 0

    task_for = staticmethod(pick_task)

    def declare(self, channel, queue):
        channel.queue_declare(queue, durable=self.durable, arguments=self.queue_arguments)

    def fill(self, connection, channel, queue, total, rnd, batch=2000):
        """Publish ``total`` copies fast: each task's frames (method, header, body) are marshalled
        once with a placeholder id, and copies get a fresh id of the same length byte for byte.
        pika would spend most of the time encoding the same header table again."""
        import pika
        from pika import frame, spec
        placeholder = 'PPPPPPPP-PPPP-4PPP-aPPP-PPPPPPPPPPPP'
        templates = {}
        for task, (props, body) in self.messages.items():
            headers = dict(props.headers, id=placeholder, root_id=placeholder)
            properties = pika.BasicProperties(content_type=props.content_type, content_encoding=props.content_encoding,
                                              headers=headers, delivery_mode=props.delivery_mode,
                                              priority=props.priority, correlation_id=placeholder,
                                              reply_to=props.reply_to)
            raw = b''.join([frame.Method(channel.channel_number, spec.Basic.Publish(exchange='', routing_key=queue)).marshal(),
                            frame.Header(channel.channel_number, len(body), properties).marshal(),
                            frame.Body(channel.channel_number, body).marshal()])
            assert len(body) < 100000 and raw.count(placeholder.encode()) == 3
            templates[task] = raw.split(placeholder.encode())
        impl = connection._impl  # pika internals: hand marshalled frames to the transport
        pending = []
        for i in range(total):
            self.counter += 1
            n = self.counter
            uid = ('%s-%04x-4%03x-a%03x-%012x' % (self.run, (n >> 40) & 0xffff, (n >> 28) & 0xfff,
                                                  (n >> 16) & 0xfff, n)).encode()
            pending.append(uid.join(templates[self.task_for(rnd)]))
            if len(pending) >= batch or i == total - 1:
                impl._adapter_emit_data(b''.join(pending))
                pending = []
                connection.process_data_events(0)

    def publish(self, channel, queue, task):
        import pika
        self.counter += 1
        n = self.counter
        uid = '%s-%04x-4%03x-a%03x-%012x' % (self.run, (n >> 40) & 0xffff, (n >> 28) & 0xfff, (n >> 16) & 0xfff, n)
        props, body = self.messages[task]
        headers = dict(props.headers, id=uid, root_id=uid)
        properties = pika.BasicProperties(content_type=props.content_type, content_encoding=props.content_encoding,
                                          headers=headers, delivery_mode=props.delivery_mode,
                                          priority=props.priority, correlation_id=uid, reply_to=props.reply_to)
        channel.basic_publish('', queue, body, properties)


def wait_ready(queue, count, timeout=120):
    """Until a passive declare says the queue holds ``count`` ready messages."""
    connection = amqp_connection()
    try:
        channel = connection.channel()
        deadline = time.monotonic() + timeout
        while True:
            n = channel.queue_declare(queue, passive=True).method.message_count
            if n == count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError('queue %s has %d messages, expected %d' % (queue, n, count))
            time.sleep(0.2)
    finally:
        connection.close()


# -- the collection, in process -----------------------------------------------------------------

def module_utils():
    """The collection's _queues module_utils, imported the way Ansible's module payload would."""
    path = os.environ.get('ANSIBLE_COLLECTIONS_PATH', '').split(os.pathsep)[0]
    if not path:
        raise RuntimeError('ANSIBLE_COLLECTIONS_PATH is not set (bench/run sets it)')
    if path not in sys.path:
        sys.path.insert(0, path)
    from ansible_collections.celeryops.fleet.plugins.module_utils import _queues
    return _queues


def describe_in_process(params):
    """The module's own work without Ansible, as celery_queue_info does it (queues discovered in
    the same reads as their counts): (seconds, states)."""
    _queues = module_utils()
    start = time.perf_counter()
    queues = _queues.open_queues(params)
    try:
        states = _queues.queue_states(queues)
    finally:
        queues.close()
    return time.perf_counter() - start, states


def module_params(broker_url, **extra):
    """The option values open_queues() gets from the module, with their defaults."""
    _queues = module_utils()
    from ansible_collections.celeryops.fleet.plugins.module_utils._broker import broker_argument_spec
    params = {}
    for spec in (broker_argument_spec(), _queues.queue_options_argument_spec()):
        for name, option in spec.items():
            params[name] = option.get('default')
    params.update(broker_url=broker_url, **extra)
    return params


# -- set-up and clean-up -----------------------------------------------------------------------

def restore_slowlog(client):
    """Put back the slowlog settings a benchmark changed (also those a crashed run left)."""
    if os.path.exists(SLOWLOG_SAVED):
        with open(SLOWLOG_SAVED) as f:
            for name, value in json.load(f).items():
                client.config_set(name, value)
        os.unlink(SLOWLOG_SAVED)


def setup():
    client = redis_client()
    restore_slowlog(client)
    size = client.dbsize()
    if size and not client.exists(MARKER):
        raise SystemExit('Redis db %d holds %d keys that are not the benchmark\'s: choose another db with '
                         'BENCH_REDIS_DB' % (REDIS_DB, size))
    client.flushdb()
    client.set(MARKER, str(os.getpid()))
    try:
        management('DELETE', '/api/vhosts/%s' % QVHOST)
    except urllib.error.HTTPError:
        pass
    management('PUT', '/api/vhosts/%s' % QVHOST, {})
    management('PUT', '/api/permissions/%s/guest' % QVHOST, {'configure': '.*', 'write': '.*', 'read': '.*'})


def reset_redis():
    client = redis_client()
    if client.dbsize() and not client.exists(MARKER):
        raise RuntimeError('Redis db %d is not the benchmark\'s any more' % REDIS_DB)
    client.flushdb()
    client.set(MARKER, str(os.getpid()))


WORKER_PIDS = os.path.join(OUT, 'worker-pids')  # Celery workers start_workers started, one pid a line


def start_workers(names, queue, logdir, **options):
    """One real `celery worker` of the test app (the integration harness's Worker) per node name, consuming
    ``queue`` with the threads pool (``options`` go to Worker); returns them once each logged ' ready.'. Their
    pids go to WORKER_PIDS, for kill_workers_left should this process die."""
    sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
    from harness import Worker  # pylint: disable=import-error
    options = dict(dict(pool='threads', concurrency=1), **options)
    workers = []
    try:
        for name in names:
            workers.append(Worker(REDIS_URL, name, [queue], logdir=logdir, **options))
            with open(WORKER_PIDS, 'a') as f:
                f.write('%d\n' % workers[-1].process.pid)
        for one in workers:
            one.wait_ready(timeout=120)
    except BaseException:
        kill_workers(workers)
        raise
    return workers


def kill_workers(workers):
    for one in workers:
        try:
            one.kill()
        except Exception as exc:  # noqa: BLE001 - go on killing the others
            log('could not kill worker %s: %s' % (one.name, exc))


def write_section(heading, text):
    """Put a section that its script writes itself (heading: its '## N. ...' line) into the results file:
    in place of its earlier text, else before the performance findings, else at the end."""
    target = os.environ.get('BENCH_RESULTS') or os.path.join(BENCH, 'RESULTS.quick.md' if QUICK else 'RESULTS.md')
    old = open(target).read() if os.path.exists(target) else ''
    if heading in old:
        start = old.index(heading)
        end = old.find('\n## ', start + len(heading))
        new = old[:start] + text + (old[end:] if end >= 0 else '\n')
    elif '\n## Performance findings' in old:
        at = old.index('\n## Performance findings') + 1
        new = old[:at] + text + '\n' + old[at:]
    else:
        new = old + '\n' + text + '\n'
    with open(target, 'w') as f:
        f.write(new)
    log('wrote %s' % target)


def kill_workers_left():
    """Kill the process group of every worker start_workers left behind (it died before its own
    clean-up), if that pid is still a celery worker of ours."""
    import signal
    if not os.path.exists(WORKER_PIDS):
        return
    with open(WORKER_PIDS) as f:
        pids = [int(line) for line in f if line.strip()]
    for pid in pids:
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if b'celery' in argv and b'worker' in argv and any(a.startswith(b'bench') for a in argv):
            try:
                os.killpg(pid, signal.SIGKILL)
                log('killed a Celery worker left behind (pid %d)' % pid)
            except OSError:
                pass
    os.unlink(WORKER_PIDS)


def cleanup():
    """Leave the brokers as found: workers killed, bench db flushed, vhost deleted, slowlog settings restored."""
    kill_workers_left()
    try:
        client = redis_client()
        if client.exists(MARKER) or not client.dbsize():
            client.flushdb()
        restore_slowlog(client)
    except Exception as exc:  # noqa: BLE001 - report and go on with RabbitMQ
        log('Redis clean-up failed: %s' % exc)
    try:
        management('DELETE', '/api/vhosts/%s' % QVHOST)
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            log('RabbitMQ clean-up failed: %s' % exc)
    except OSError as exc:
        log('RabbitMQ clean-up failed: %s' % exc)


if __name__ == '__main__':
    {'setup': setup, 'cleanup': cleanup}[sys.argv[1]]()
