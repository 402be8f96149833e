"""Bad input gets one clear message naming the option or endpoint: no traceback, no hang, no password.

The matrix below is (target, option, bad value, expected text): every module, the inventory plugin, the
queue_depth lookup and the filters, each given one bad value at a time on top of otherwise good options.
The message must name the option (for a filter: the filter, and its argument if any) and hold the expected
text. Values are passed as they are (YAML/JSON types), so wrong types reach Ansible's own checks.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from harness import unwrapped

SECRET = 'pw-' + uuid.uuid4().hex
ABSENT = object()  # the option is left out (the test's broker URL is there otherwise)


class given(object):
    """A bad value that is bad only together with other options: given(value, **others)."""

    def __init__(self, value, **others):
        self.value, self.others = value, others


MODULE_BASE = {
    'celery_queue_info': dict(queues=['q']),
    'celery_queue': dict(queues=['q']),
    'celery_worker_info': dict(timeout=0.5),
    'celery_worker': dict(nodes=['w1@host'], state='drained'),
    'celery_events_info': dict(duration=0.5),
}
TYPE = 'unable to convert to'

MODULE_CASES = [
    # shared broker options (module_utils/_broker.py): celery_queue_info stands for every module
    ('celery_queue_info', 'broker_url', 'kafka://127.0.0.1:9092', "unsupported scheme 'kafka'"),
    ('celery_queue_info', 'broker_url', '127.0.0.1:6379', "no '://' found"),
    ('celery_queue_info', 'broker_url', 12345, "no '://' found"),
    ('celery_queue_info', 'broker_url', ['redis://127.0.0.1:6379/0'], 'must start with redis://'),
    ('celery_queue_info', 'broker_url', 'redis://127.0.0.1:99999/0', 'port must be a number from 1 to 65535'),
    ('celery_queue_info', 'broker_url', 'redis://127.0.0.1:0/0', 'port 0 is not a valid broker port'),
    ('celery_queue_info', 'broker_url', 'redis://127.0.0.1:6379/abc', "the Redis database must be a number"),
    ('celery_queue_info', 'broker_url', 'redis://[::1/0', 'malformed URL'),
    ('celery_queue_info', 'broker_url', 'redis://u:%s/x@127.0.0.1/0' % SECRET, "'@' after the host"),
    ('celery_queue_info', 'broker_url', 'redis://127.0.0.1:6379/0?ssl_cert_reqs=maybe',
     'ssl_cert_reqs must be one of required, optional or none'),
    ('celery_queue', 'broker_url', ABSENT, 'broker_url is required'),
    ('celery_queue_info', 'connect_timeout', 0, 'must be a positive number of seconds'),
    ('celery_queue_info', 'connect_timeout', -2, 'must be a positive number of seconds'),
    ('celery_queue_info', 'connect_timeout', 'nan', 'must be a positive number of seconds, got nan'),
    ('celery_worker_info', 'connect_timeout', 'inf', 'must be a positive number of seconds, got inf'),
    ('celery_queue_info', 'connect_timeout', 'soon', TYPE + ' float'),
    ('celery_queue_info', 'tls_ca_file', given('/nonexistent/ca.pem', broker_url='rediss://127.0.0.1:6379/0'),
     'no such file: /nonexistent/ca.pem'),
    ('celery_queue_info', 'tls_ca_file', '/nonexistent/ca.pem', 'need a TLS broker_url'),
    ('celery_events_info', 'tls_key_file', given(__file__, broker_url='rediss://127.0.0.1:6379/0'),
     'tls_key_file needs tls_cert_file'),
    ('celery_queue_info', 'tls_verify', 'sometimes', TYPE + ' bool'),
    ('celery_queue_info', 'bogus_option', 1, 'Unsupported parameters'),
    # queue options (module_utils/_queues.py)
    ('celery_queue_info', 'priority_steps', [0, 300], 'a non-empty list of numbers from 0 to 255'),
    ('celery_queue', 'priority_steps', [], 'a non-empty list of numbers from 0 to 255'),
    ('celery_queue_info', 'priority_steps', ['high'], TYPE + ' int'),
    ('celery_queue_info', 'sep', '', 'must not be empty'),
    ('celery_queue_info', 'queues', ['ok', ''], 'a queue name is empty'),
    ('celery_queue_info', 'management_url', 'localhost:15672', 'must be an http:// or https:// URL'),
    ('celery_queue', 'management_url', 'amqp://guest@127.0.0.1:5672//', 'must be an http:// or https:// URL'),
    ('celery_queue_info', 'management_url', 'http://127.0.0.1:99999', 'a port from 1 to 65535'),
    ('celery_queue_info', 'management_validate_certs', 'perhaps', TYPE + ' bool'),
    ('celery_queue_info', 'wait', 'perhaps', TYPE + ' bool'),
    ('celery_queue_info', 'wait_timeout', given(0, wait=True), 'must be a positive number of seconds'),
    ('celery_queue_info', 'wait_timeout', 'inf', 'must be a positive number of seconds, got inf'),
    ('celery_queue_info', 'wait_sleep', -1, 'must be a positive number of seconds'),
    # celery_queue_info
    ('celery_queue_info', 'peek', 'many', TYPE + ' int'),
    ('celery_queue_info', 'peek', -1, 'must be between 0 and'),
    ('celery_queue_info', 'peek', 10 ** 6, 'must be between 0 and'),
    ('celery_queue_info', 'max_messages', -5, 'must be 0 or more'),
    ('celery_queue_info', 'max_unacked', -1, 'must be 0 or more'),
    ('celery_queue_info', 'min_consumers', 1, 'Redis cannot count consumers'),
    ('celery_queue_info', 'breakdown', 'lots', TYPE + ' bool'),
    # celery_queue
    ('celery_queue', 'queues', [], 'must name at least one queue'),
    ('celery_queue', 'queues', ABSENT, 'missing required arguments: queues'),
    ('celery_queue', 'queues', {'name': 'q'}, TYPE + ' list'),
    ('celery_queue', 'state', 'gone', 'must be one of: purged, trimmed'),
    ('celery_queue', 'keep', 3, 'only goes with state: trimmed'),
    ('celery_queue', 'keep', given(-1, state='trimmed'), 'must be 0 or more'),
    ('celery_queue', 'keep', given('ten', state='trimmed'), TYPE + ' int'),
    ('celery_queue', 'keep', given(ABSENT, state='trimmed'), 'keep is required with state: trimmed'),
    ('celery_queue', 'drop', given('middle', state='trimmed', keep=1), 'must be one of: oldest, newest'),
    ('celery_queue', 'task_names', [''], 'a task name is empty'),
    ('celery_queue', 'task_names', [], 'task_names is an empty list'),
    ('celery_worker', 'nodes', [], 'the list is empty'),
    ('celery_queue', 'task_names', given(['fleet_tasks.add'], state='trimmed', keep=1),
     'only goes with state: purged'),
    # celery_worker_info
    ('celery_worker_info', 'expected_nodes', ['worker1'], 'is not a node name like worker1@host'),
    ('celery_worker_info', 'expected_nodes', ['@host'], 'is not a node name like worker1@host'),
    ('celery_worker_info', 'expected_nodes', ['worker1@'], 'is not a node name like worker1@host'),
    ('celery_worker_info', 'expected_nodes', [''], 'a node name is empty'),
    ('celery_worker_info', 'expected_nodes', [' w1@host'], 'starts or ends with whitespace'),
    ('celery_worker_info', 'expected_nodes', ['w[12@host'], "'[' without a closing ']'"),
    ('celery_worker_info', 'expected_count', -1, 'must be 0 or more'),
    ('celery_worker_info', 'expected_count', 'three', TYPE + ' int'),
    ('celery_worker_info', 'timeout', 0, 'must be a positive number of seconds'),
    ('celery_worker_info', 'timeout', 'nan', 'must be a positive number of seconds, got nan'),
    ('celery_worker_info', 'include', ['ping', 'everything'], 'must be one or more of'),
    ('celery_worker_info', 'include', 'everything', 'must be one or more of'),
    ('celery_worker_info', 'wait', True, 'wait needs expected_nodes or expected_count'),
    ('celery_worker_info', 'wait_timeout', given('inf', wait=True, expected_count=1),
     'must be a positive number of seconds, got inf'),
    # celery_worker
    ('celery_worker', 'nodes', ['x'], 'is not a node name like worker1@host'),
    ('celery_worker', 'nodes', [''], 'a node name is empty'),
    ('celery_worker', 'nodes', ['*@web[1'], "'[' without a closing ']'"),
    ('celery_worker', 'nodes', {'w1@host': True}, TYPE + ' list'),
    ('celery_worker', 'state', 'paused', 'must be one of: consuming, drained, stopped'),
    ('celery_worker', 'state', ABSENT, 'nothing to do'),
    ('celery_worker', 'state', given('stopped', concurrency=2), 'state: stopped goes with neither'),
    ('celery_worker', 'queues', given(ABSENT, state='consuming'), 'queues is required with state: consuming'),
    ('celery_worker', 'queues', [''], 'a queue name is empty'),
    ('celery_worker', 'exclusive', True, 'only goes with state: consuming'),
    ('celery_worker', 'concurrency', 0, 'must be 1 or more'),
    ('celery_worker', 'concurrency', 'many', TYPE + ' int'),
    ('celery_worker', 'autoscale', [2, 5], 'max (2) must be at least min (5)'),
    ('celery_worker', 'autoscale', [5], 'must be [max, min]'),
    ('celery_worker', 'autoscale', [-1, 0], 'two numbers of 0 or more'),
    ('celery_worker', 'autoscale', [], 'must be [max, min]'),
    ('celery_worker', 'autoscale', given([4, 2], concurrency=3), 'concurrency and autoscale exclude each other'),
    ('celery_worker', 'events', 'maybe', TYPE + ' bool'),
    ('celery_worker', 'timeout', -1, 'must be a positive number of seconds'),
    ('celery_worker', 'wait_timeout', 0, 'must be a positive number of seconds'),
    ('celery_worker', 'wait_sleep', 'nan', 'must be a positive number of seconds, got nan'),
    # celery_events_info
    ('celery_events_info', 'duration', 0, 'must be a positive number of seconds'),
    ('celery_events_info', 'duration', 'inf', 'must be a positive number of seconds, got inf'),
    ('celery_events_info', 'duration', 'long', TYPE + ' float'),
    ('celery_events_info', 'max_events', 0, 'must be 1 or more'),
    ('celery_events_info', 'max_failures', -1, 'must be 0 or more'),
    ('celery_events_info', 'types', ['task-exploded'], 'must be one or more of'),
]

INVENTORY_CASES = [
    ('celery_workers', 'broker_url', 'kafka://127.0.0.1:9092', "unsupported scheme 'kafka'"),
    ('celery_workers', 'broker_url', ABSENT, 'broker_url is required'),
    ('celery_workers', 'timeout', 0, 'must be a positive number of seconds'),
    ('celery_workers', 'timeout', 'inf', 'must be a positive number of seconds, got inf'),
    ('celery_workers', 'timeout', 'soon', 'float'),
    ('celery_workers', 'expected_count', 0, 'must be 1 or more'),
    ('celery_workers', 'connect_timeout', -1, 'must be a positive number of seconds'),
    ('celery_workers', 'tls_ca_file', '/nonexistent/ca.pem', 'need a TLS broker_url'),
]

# Filters have no options but their input and arguments: the column names what the message must name.
PLUGIN_CASES = [
    ('queue_depth', 'broker_url', 'kafka://127.0.0.1:9092', "unsupported scheme 'kafka'"),
    ('queue_depth', 'broker_url', 'redis://:%s@127.0.0.1:99999/0' % SECRET, 'port must be a number'),
    ('queue_depth', 'connect_timeout', -1, 'must be a positive number of seconds'),
    ('queue_depth', 'connect_timeout', 'soon', 'float'),
    ('queue_depth', 'priority_steps', [999], 'a non-empty list of numbers from 0 to 255'),
    ('queue_depth', 'sep', '', 'must not be empty'),
    ('queue_depth', 'management_url', 'ftp://127.0.0.1/', 'must be an http:// or https:// URL'),
    ('queue_depth', 'queue names', [''], 'a queue name is empty'),
    ('queue_depth', 'queue', [], 'name at least one queue'),
    ('decode_message', 'headers', 'oops', 'must be a dict, got str'),
    ('decode_message', 'properties', [1], 'must be a dict, got list'),
    ('decode_message', 'decode_message', 42, 'expected a JSON string, got int'),
    ('decode_message', 'decode_message', 'hello', 'not JSON'),
    ('decode_message', 'decode_message', '{"x": 1}', 'without "headers" or "body"'),
    ('node_host', 'node_host', 42, "expected a node name like 'worker1@host', got int"),
    ('node_host', 'node_host', ['w1@h'], "expected a node name like 'worker1@host', got list"),
    ('node_name', 'node_name', None, "expected a node name like 'worker1@host', got NoneType"),
]


def case_id(case):
    """target-option-value, a task name (never the secret: task names are printed)."""
    target, option, value, _expected = case
    if isinstance(value, given):
        value = '%r+%r' % ('absent' if value.value is ABSENT else value.value, value.others)
    return ('%s-%s-%s' % (target, option, 'absent' if value is ABSENT else value)).replace(SECRET, '***')


def module_args(target, option, value, url):
    args = dict(MODULE_BASE[target], broker_url=url)
    if isinstance(value, given):
        args.update(value.others)
        value = value.value
    if value is ABSENT:
        args.pop(option, None)
    else:
        args[option] = value
    return args


def assert_clear(case, message):
    target, option, _value, expected = case
    assert 'Traceback' not in message, message
    assert option in message and expected in message, message


def test_module_matrix(redis_env, ansible):
    """Every module case in one playbook: each fails alone, clearly, and none waits on anything."""
    tasks = [{'name': case_id(case), 'celeryops.fleet.' + case[0]: module_args(case[0], case[1], case[2], redis_env.url)}
             for case in MODULE_CASES]
    results = ansible.play(tasks, env={'CELERY_BROKER_URL': ''}, timeout=600)
    assert SECRET not in ansible.last['stdout'] + ansible.last['stderr']
    failures = []
    for case, result in zip(MODULE_CASES, results):
        try:
            assert result.get('failed'), 'did not fail'
            assert_clear(case, result['msg'])
            if 'option' in result:  # the modules' own checks say which option, for programs too
                assert result['option'] in result['msg'], 'option: %s' % result['option']
        except AssertionError as error:
            failures.append('%s: %s' % (case_id(case), error))
    assert not failures, '\n'.join(failures)
    # No case waits on a timer (the defaults wait 5 s to connect, 120 or 300 s for a state): none takes
    # much beyond Ansible's own cost of a task, which the fastest case shows; the margin is for a busy machine.
    seconds = ansible.task_seconds()
    assert max(seconds) < min(seconds) + 10, sorted(zip(seconds, map(case_id, MODULE_CASES)))[-3:]


def test_plugin_matrix(redis_env, ansible):
    """The queue_depth lookup and the filters, in one playbook of debug tasks."""
    def expression(case, name):
        target, option, value, _expected = case
        if target == 'queue_depth':
            if option in ('queue names', 'queue'):
                return "query('celeryops.fleet.queue_depth', *%s, broker_url=url)" % name
            if option == 'broker_url':
                return "query('celeryops.fleet.queue_depth', 'q', broker_url=%s)" % name
            return "query('celeryops.fleet.queue_depth', 'q', broker_url=url, %s=%s)" % (option, name)
        good = '"e30="'
        if option in ('headers', 'properties'):
            return '%s | celeryops.fleet.%s(%s=%s)' % (good, target, option, name)
        return '%s | celeryops.fleet.%s' % (name, target)

    names = ['case%d' % index for index in range(len(PLUGIN_CASES))]
    tasks = [{'name': case_id(case), 'ansible.builtin.debug': {'msg': '{{ %s }}' % expression(case, name)}}
             for case, name in zip(PLUGIN_CASES, names)]
    play_vars = dict(zip(names, (case[2] for case in PLUGIN_CASES)), url=redis_env.url)
    results = ansible.play(tasks, play_extra={'vars': play_vars})
    assert SECRET not in ansible.last['stdout'] + ansible.last['stderr']
    failures = []
    for case, result in zip(PLUGIN_CASES, results):
        try:
            assert result.get('failed'), 'did not fail'
            assert_clear(case, result['msg'])
            assert case[0] in result['msg'], result['msg']  # which plugin is at fault
        except AssertionError as error:
            failures.append('%s: %s' % (case_id(case), error))
    assert not failures, '\n'.join(failures)


def test_inventory_matrix(redis_env, tmp_path):
    """Each bad inventory file through ansible-inventory: the plugin's name, the option, no traceback."""
    def run(index, case):
        _target, option, value, _expected = case
        options = dict(plugin='celeryops.fleet.celery_workers', broker_url=redis_env.url, timeout=0.5)
        if value is ABSENT:
            options.pop(option)
        else:
            options[option] = value
        path = tmp_path / ('bad%d.celery_workers.yml' % index)
        path.write_text(json.dumps(options))  # JSON is YAML
        outputs[index] = subprocess.run(
            ['ansible-inventory', '-i', str(path), '--list'], capture_output=True, text=True, timeout=120,
            check=False, env=dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable, CELERY_BROKER_URL='',
                                  ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED='1'))

    outputs = [None] * len(INVENTORY_CASES)
    threads = [threading.Thread(target=run, args=(index, case)) for index, case in enumerate(INVENTORY_CASES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    failures = []
    for case, out in zip(INVENTORY_CASES, outputs):
        try:
            assert out is not None and out.returncode != 0, (out.stdout if out else 'did not finish')
            assert 'Traceback' not in out.stderr and unwrapped(case[1]) in unwrapped(out.stderr), out.stderr
            assert unwrapped(case[3]) in unwrapped(out.stderr), out.stderr
            assert SECRET not in out.stdout + out.stderr
        except AssertionError as error:
            failures.append('%s: %s' % (case_id(case), error))
    assert not failures, '\n'.join(failures)


# -- the broker refuses: the endpoint is named, and the option to look at -------------------------

@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def run_all(ansible, cases):
    """Run (module, args, expected substrings) cases in one playbook; check each failed clearly."""
    tasks = [{'name': 'case %d' % i, 'celeryops.fleet.' + module: args} for i, (module, args, _expected) in enumerate(cases)]
    results = ansible.play(tasks, timeout=120)
    output = ansible.last['stdout'] + ansible.last['stderr']
    assert SECRET not in output
    for (module, args, expected), result in zip(cases, results):
        assert result.get('failed'), (module, args, result)
        msg = result['msg']
        assert 'Traceback' not in msg, msg
        for text in expected:
            assert text in msg, (args, msg)
    return results


def test_broker_refusals_redis(redis_env, redis_user, ansible):
    cases = [
        ('celery_queue_info', dict(broker_url='redis://127.0.0.1:1/0'), ['cannot connect to redis 127.0.0.1:1 db 0']),
        ('celery_queue_info', dict(broker_url='redis://%s:%s@127.0.0.1:6379/0' % (redis_user.name, SECRET)),
         ['authentication failed at redis 127.0.0.1:6379 db 0']),
        ('celery_queue', dict(broker_url='redis://%s@127.0.0.1:6379/0' % redis_user.name, broker_password=SECRET,
                              queues=['q']),
         ['authentication failed at redis 127.0.0.1:6379 db 0']),
        ('celery_queue_info', dict(broker_url='redis://127.0.0.1:6379/999'),
         ['broker_url: Redis database 999 does not exist']),
        ('celery_queue_info', dict(broker_url='rediss://127.0.0.1:6379/0', connect_timeout=2),
         ['rediss 127.0.0.1:6379 db 0', 'does the port speak TLS?']),
    ]
    for result in run_all(ansible, cases):
        assert result['option'] in ('broker_url', 'broker_password', 'connect_timeout'), result


def test_broker_down_names_the_endpoint_in_every_module(ansible):
    down = {'redis://127.0.0.1:1/0': 'cannot connect to redis 127.0.0.1:1 db 0',
            'amqp://guest:%s@127.0.0.1:1//' % SECRET: 'cannot connect to amqp 127.0.0.1:1 vhost /'}
    cases = [(module, dict(MODULE_BASE[module], broker_url=url, expected_count=1) if module == 'celery_worker_info'
              else dict(MODULE_BASE[module], broker_url=url), [expected])
             for module in sorted(MODULE_BASE) for url, expected in sorted(down.items())]
    for result in run_all(ansible, cases):
        assert result['option'] == 'broker_url', result


def test_silent_server_fails_within_timeout(silent_server, ansible):
    cases = [
        ('celery_queue_info', dict(broker_url='redis://127.0.0.1:%d/0' % silent_server, connect_timeout=1),
         ['timed out', 'redis 127.0.0.1:%d' % silent_server]),
        ('celery_queue_info', dict(broker_url='amqp://guest:%s@127.0.0.1:%d//' % (SECRET, silent_server),
                                   queues=['q'], connect_timeout=1),
         ['amqp 127.0.0.1:%d' % silent_server]),
        ('celery_queue', dict(broker_url='redis://127.0.0.1:%d/0' % silent_server, queues=['q'], connect_timeout=1),
         ['timed out']),
    ]
    results = run_all(ansible, cases)
    # Three modules, each bounded by its 1 s timeout (plus Ansible's own start-up per task).
    assert ansible.last['seconds'] < 30, ansible.last['seconds']
    assert len(results) == 3
