"""Issue 13, items 6, 9 and 12: an empty node list, a hostile node name and a task's arguments, through
ansible-playbook, ansible-inventory and ansible as users run them, against real Celery workers and Redis."""

import json
import os
import re
import subprocess
import sys
import urllib.parse
import uuid

from harness import publish, unwrapped

HOSTILE_NODE = 'w@-oProxyCommand=touch x'


def run(argv, cwd=None, **env):
    """A command as an operator types it, with Ansible's default (human) output."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=cwd,
                          env=dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_NOCOLOR='1',
                                   ANSIBLE_STDOUT_CALLBACK='default', ANSIBLE_LOCALHOST_WARNING='false',
                                   ANSIBLE_DEPRECATION_WARNINGS='false', **env))


def flat(text):
    """Output with its line wrapping undone: compare with flat(expected)."""
    return unwrapped(text)


# -- item 6: nodes: [] is not "every node" ---------------------------------------------------------

def test_an_empty_node_list_is_refused_and_stops_nothing(redis_env, ansible, workers):
    url = redis_env.url
    workers.start(url, 'keep@fleet', ['q1'])
    stop = dict(broker_url=url, state='stopped', wait_timeout=20)
    refused = ansible.play([
        {'celeryops.fleet.celery_worker': dict(stop, nodes=[])},
        {'celeryops.fleet.celery_worker': dict(stop, nodes='{{ picked }}')},
        {'celeryops.fleet.celery_worker': dict(stop, nodes='{{ [] }}')},
        {'celeryops.fleet.celery_worker': dict(stop, nodes='{{ nothing }}')},
        {'celeryops.fleet.celery_worker': dict(stop, nodes=[], state='drained'), 'check_mode': True},
    ], play_extra={'vars': {'picked': [], 'nothing': None}})
    for index, result in enumerate(refused):
        assert result.get('failed'), (index, result)
        if index == 3:  # null: Ansible's own check, as nodes has a default (ansible-core 2.16 says <class 'NoneType'>)
            assert re.search(r"argument 'nodes' is of type (<class ')?NoneType", result['msg']), result['msg']
            continue
        assert result['msg'].startswith('nodes: the list is empty'), (index, result['msg'])
        assert 'omit nodes to act on every node' in result['msg'], (index, result['msg'])
        assert result['nodes'] == {} and 'Traceback' not in result['msg'], (index, result)

    # Still there: nothing was sent.
    alive = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=['keep@fleet'], include=['ping'],
                                                      timeout=10))
    assert alive['online'] == ['keep@fleet'], alive

    # Likewise queues: [] with state: drained is not "every queue".
    drained = ansible.module('celery_worker', dict(broker_url=url, nodes=['keep@fleet'], state='drained',
                                                   queues='{{ [] }}', wait_timeout=20))
    assert drained.get('failed') and drained['msg'].startswith('queues: the list is empty'), drained
    assert 'omit queues' in drained['msg'], drained
    consuming = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=['keep@fleet'],
                                                          include=['active_queues'], timeout=10))
    assert consuming['workers']['keep@fleet']['queues'] == ['q1'], consuming

    # Omitted, nodes means every node, and check mode and the result say so.
    planned = ansible.module('celery_worker', dict(stop), check=True)
    assert planned['changed'] is True and planned['all_nodes'] is True, planned
    assert planned['nodes']['keep@fleet']['actions'] == ['shutdown'], planned
    named = ansible.module('celery_worker', dict(stop, nodes=['keep@*']), check=True)
    assert named['all_nodes'] is False and list(named['nodes']) == ['keep@fleet'], named
    alive = ansible.module('celery_worker_info', dict(broker_url=url, expected_nodes=['keep@fleet'], include=['ping'],
                                                      timeout=10))
    assert alive['online'] == ['keep@fleet'], alive


# -- item 9: a node name never becomes a host it does not name -------------------------------------

def inventory(tmp_path, name, **options):
    path = tmp_path / ('%s.celery_workers.yml' % name)
    path.write_text(json.dumps(dict(plugin='celeryops.fleet.celery_workers', **options)))  # JSON is YAML
    return str(path)


def listed_hosts(out):
    assert out.returncode == 0, out.stderr
    return sorted(json.loads(out.stdout)['_meta']['hostvars'])


def test_a_hostile_node_name_never_becomes_a_host(redis_env, workers, tmp_path):
    url = redis_env.url
    hostile = workers.start(url, HOSTILE_NODE, ['q1'])
    assert ' ready.' in hostile.log()  # Celery takes the name as it is
    workers.start(url, 'w1@good-a.example', ['q1'])
    workers.start(url, 'x@attacker.example', ['q1'])
    path = inventory(tmp_path, 'fleet', broker_url=url, expected_count=3, timeout=20)

    listing = run(['ansible-inventory', '-i', path, '--list'], ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED='1')
    assert listed_hosts(listing) == ['attacker.example', 'good-a.example']
    assert HOSTILE_NODE not in listing.stdout
    assert flat('skipped worker node %r' % HOSTILE_NODE) in flat(listing.stderr), listing.stderr
    assert flat('not a valid host name') in flat(listing.stderr)

    # What ansible would hand to ssh: the hostile name is not among the hosts, so no ProxyCommand runs.
    ping = run(['ansible', '-i', path, 'all', '-m', 'ansible.builtin.ping', '-T', '5'], cwd=str(tmp_path),
               ANSIBLE_HOST_KEY_CHECKING='False')
    assert '-oProxyCommand' not in ping.stdout, ping.stdout
    assert 'good-a.example' in ping.stdout, ping.stdout + ping.stderr
    assert not (tmp_path / 'x').exists()

    # The allow-list keeps only the hosts it names; the rest are skipped with a warning.
    allowed = inventory(tmp_path, 'allowed', broker_url=url, expected_count=3, timeout=20,
                        hosts=['good-*.example', 'web[0-9]'])
    listing = run(['ansible-inventory', '-i', allowed, '--list'], ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED='1')
    assert listed_hosts(listing) == ['good-a.example']
    assert flat("skipped worker node 'x@attacker.example'") in flat(listing.stderr), listing.stderr
    assert flat('matches none of hosts') in flat(listing.stderr), listing.stderr


# -- item 12: queue_report shows task names and ids, not arguments ---------------------------------

def test_queue_report_keeps_task_arguments_out_of_the_log(redis_env, tmp_path):
    url = redis_env.url
    secret = 'sk_live_' + uuid.uuid4().hex
    [task_id] = publish(url, 'fleet_tasks.mail', 'reports', args=(secret,), kwargs={'token': secret + '-kw'})
    redis_env.client.lpush('reports', b'not a celery message')  # a stray message from another client

    def report(*flags, **extra):
        extra_vars = dict(celery_broker_url=url, queue_report_queues=['reports'], queue_report_peek=5, **extra)
        out = run(['ansible-playbook', '-i', 'localhost,', '-c', 'local', 'celeryops.fleet.queue_report',
                   '-e', json.dumps(extra_vars)] + list(flags))
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    # At -v Ansible prints the module's whole result too: the module leaves the arguments out as well.
    quiet = report('-v')
    # One table row per queue: name, ready, unacked, consumers (Redis cannot count them), source, by priority step.
    assert re.search(r'"QUEUE +READY +UNACKED +CONSUMERS +SOURCE +PRIORITIES"', quiet), quiet
    assert re.search(r'"reports +2 +0 +n/a +redis +0=2 3=0 6=0 9=0"', quiet), quiet
    assert 'fleet_tasks.mail' in quiet and task_id in quiet and '<not a Celery task>[?]' in quiet, quiet
    assert secret not in quiet, quiet

    shown = report(queue_report_peek_arguments=True)
    assert task_id in shown and secret in shown and secret + '-kw' in shown, shown


def test_queue_report_on_an_empty_vhost_says_so(rabbit_env):
    out = run(['ansible-playbook', '-i', 'localhost,', '-c', 'local', 'celeryops.fleet.queue_report',
               '-e', json.dumps({'celery_broker_url': rabbit_env.url})])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    vhost = urllib.parse.unquote(rabbit_env.qvhost)
    assert '"no Celery queues found on amqp 127.0.0.1:5672 vhost %s"' % vhost in out.stdout, out.stdout
    assert 'QUEUE' not in out.stdout, out.stdout
