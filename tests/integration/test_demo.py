"""scripts/demo, as a new user runs it: on its own throwaway Redis and workers, and read only on a broker given by
CELERY_BROKER_URL (a RabbitMQ vhost of the test's own, empty and then holding messages).

The bound on its time is generous on purpose: how fast the demo is belongs in bench/, not here.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import urllib.parse

import pytest

from harness import free_port, management, publish, require

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, 'scripts', 'demo')
BOUND = 120


def run_demo(broker_url=None, returncode=0):
    env = dict(os.environ)
    env.pop('CELERY_BROKER_URL', None)
    env.pop('PYTHONWARNINGS', None)
    if broker_url:
        env['CELERY_BROKER_URL'] = broker_url
    try:
        done = subprocess.run([DEMO], env=env, capture_output=True, text=True, timeout=BOUND, check=False)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail('scripts/demo did not end within %d s:\n%s\n%s' % (BOUND, timeout.stdout, timeout.stderr))
    assert done.returncode == returncode, done.stdout + done.stderr
    # No warning the user did not cause: cryptography's DSA notice, a Python probe, Ansible's own.
    for noise in ('Warning:', '[WARNING]', '[DEPRECATION WARNING]', 'pyenv', 'Traceback'):
        assert noise not in done.stdout + done.stderr, done.stdout + done.stderr
    return done.stdout if returncode == 0 else done.stderr


def facts(out):
    """The JSON that closes the output."""
    _before, _sep, tail = out.partition('THE SAME FACTS AS JSON\n')
    assert tail, out
    return json.loads(tail)


def section(out, title):
    """The lines of one section of the report, from its title to the next blank line."""
    lines = out.split('\n')
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_demo_on_its_own_redis_and_workers():
    require(shutil.which('redis-server') is not None, 'redis-server')
    out = run_demo()
    where = re.search(r'^celeryops\.fleet on redis 127\.0\.0\.1:(\d+) db 0 \(the demo\'s throwaway Redis', out, re.M)
    assert where, out
    found = facts(out)

    queues = section(out, 'QUEUES on redis 127.0.0.1:%s db 0' % where.group(1))
    assert re.match(r'\s+queue\s+ready\s+unacked\s+consumers\s+by priority step\s+backlog by task$', queues[1]), out
    assert any(re.match(r'\s+default\s+\d+\s+\d+\s+1\s', line) for line in queues), out
    assert any(re.match(r'\s+reports\s+\d+\s+\d+\s+1\s', line) for line in queues), out
    assert any('Redis cannot count them' in line and 'active_queues' in line for line in queues), out
    assert any(line.startswith('  next in default: fleet_tasks.add[') for line in queues), out

    workers = section(out, 'WORKERS')
    assert re.match(r'\s+node\s+queues\s+active\s+reserved\s+running longest$', workers[1]), out
    assert any(re.match(r'\s+demo1@\S+\s+default\s+1\s+\d+\s+fleet_tasks\.sleep\[\w{8}\] for [\d.]+ s$', line)
               for line in workers), out
    assert any(re.match(r'\s+demo2@\S+\s+reports\s+1\s+\d+\s+fleet_tasks\.sleep\[\w{8}\] for [\d.]+ s$', line)
               for line in workers), out

    purge = section(out, 'PURGE PREVIEW (celery_queue in check mode: it reports what a purge WOULD remove; nothing was '
                         'removed)')
    assert any(re.match(r'\s+default\s+%d\s' % found['queues'][0]['ready'], line) for line in purge), out
    assert 'Nothing was purged: the purge above is a preview.' in out

    # The facts: every message the demo queued is ready, held or running; each worker runs one task.
    by_name = dict((queue['name'], queue) for queue in found['queues'])
    nodes = dict((worker['queues'][0], worker) for worker in found['workers'])
    assert sorted(by_name) == ['default', 'reports'], found
    for name, queued in (('default', 15), ('reports', 7)):
        queue, worker = by_name[name], nodes[name]
        assert worker['active'] == 1 and worker['running_longest']['task'] == 'fleet_tasks.sleep', found
        assert queue['ready'] + queue['unacked'] + worker['active'] == queued, found
        assert queue['consumers'] == 1, found
    assert by_name['default']['tasks'] == {'fleet_tasks.add': by_name['default']['ready']}, found
    assert [(p['name'], p['would_remove']) for p in found['purge_preview']] == [
        ('default', by_name['default']['ready']), ('reports', by_name['reports']['ready'])], found
    assert found['workers_missing'] == []

    # The throwaway Redis is gone with the demo: it has closed its port.
    with pytest.raises(OSError):
        socket.create_connection(('127.0.0.1', int(where.group(1))), timeout=2).close()


def test_demo_on_an_empty_rabbitmq_vhost(rabbit_env):
    out = run_demo(rabbit_env.url)
    where = 'amqp 127.0.0.1:5672 vhost %s' % rabbit_env.vhost
    assert 'celeryops.fleet on %s (CELERY_BROKER_URL, read only)' % where in out, out
    assert '  no Celery queues found on %s' % where in out, out
    assert '  no worker answered the ping within 2 s' in out, out
    assert '  nothing to preview: no queues' in out, out
    assert 'Read only: no task was published, consumed or purged on %s' % where in out, out
    assert 'Messages were not read' in out, out
    # A warning the user's URL causes (guest:guest) is theirs to see.
    assert '\nTHE MODULES WARNED\n  broker.user is null: the broker password is the user name' in out, out
    assert facts(out) == {'broker': where, 'queues': [], 'workers': [], 'workers_missing': [], 'purge_preview': []}
    assert rabbit_env.snapshot() == {}


def test_demo_on_a_rabbitmq_queue_with_messages(rabbit_env):
    url = rabbit_env.url
    publish(url, 'fleet_tasks.add', 'billing', args=(1, 2), count=6)
    # One message that is not a Celery task: the demo reports it like any other.
    management('POST', '/api/exchanges/%s/amq.default/publish' % urllib.parse.quote(rabbit_env.vhost, safe=''),
               {'properties': {}, 'routing_key': 'billing', 'payload': 'not a task', 'payload_encoding': 'string'})
    rabbit_env.wait_for('billing', lambda record: record.get('messages') == 7)

    out = run_demo(url)
    queues = section(out, 'QUEUES on amqp 127.0.0.1:5672 vhost %s' % rabbit_env.vhost)
    assert re.match(r'\s+queue\s+ready\s+unacked\s+consumers$', queues[1]), out
    assert re.match(r'\s+billing\s+7\s+0\s+0$', queues[2]), out
    # Only the queues found: none of the demo's own names.
    assert len(queues) == 5 and 'passive queue.declare' in queues[3] and 'management API' in queues[4], out
    purge = section(out, 'PURGE PREVIEW')
    assert re.match(r'\s+billing\s+7\s+0$', purge[2]), out
    assert 'to purge for real: ansible-playbook celeryops.fleet.purge' in purge[3], out
    assert 'no worker answered the ping within 2 s' in out, out
    found = facts(out)
    assert found['queues'] == [{'name': 'billing', 'ready': 7, 'unacked': 0, 'consumers': 0}], found
    assert found['purge_preview'] == [{'name': 'billing', 'would_remove': 7, 'unacked_kept': 0}], found
    # Read only: every message is still there.
    assert rabbit_env.queue('billing')['messages'] == 7


def test_demo_on_a_broker_that_does_not_answer():
    port = free_port()
    err = run_demo('redis://:secret-pw@127.0.0.1:%d/0' % port, returncode=1)
    assert ('scripts/demo: the task "Ask the workers what they consume, run and hold (the demo\'s own are awaited by '
            'ping)" failed: cannot connect to redis 127.0.0.1:%d db 0' % port) in err, err
    assert 'secret-pw' not in err, err
