"""The modules under Mitogen for Ansible (strategy mitogen_linear): one Python interpreter runs task after task.

Mitogen keeps the interpreter of a host (and the collection's module_utils imported in it) from one task to
the next, on its main thread. Nothing of one task may reach the next: not the broker's URL, user or password
(in the result, its warnings and errors, the -vvv output, or anywhere in the interpreter's memory), not a
signal handler or an alarm of the time limit that fired, not a socket to the broker. A probe module of this
test's own (written beside the play, not part of the collection) reports what the interpreter holds between
the collection's tasks, and its process id proves that one interpreter ran them all.

In the CI step that reruns the ``mitogen`` tests (scripts/test), ANSIBLE_STRATEGY is set and must be
mitogen_linear; run on its own, this file sets the strategy itself.
"""

import gc
import inspect
import json
import os
import sys
import urllib.parse

import pytest

from harness import AMQP_PORT, REDIS_PORT, require

pytestmark = pytest.mark.mitogen

ESTABLISHED = '01'   # the state column of /proc/net/tcp


def tcp_connections():
    """(local port, remote port, state) of each TCP socket this process holds open (IPv4 and IPv6).

    Both this test and its probe module (below, which gets this function's source) read them."""
    inodes = set()
    for fd in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink('/proc/self/fd/' + fd)
        except OSError:
            continue
        if target.startswith('socket:['):
            inodes.add(target[8:-1])
    found = set()
    for table in ('/proc/self/net/tcp', '/proc/self/net/tcp6'):
        with open(table) as handle:
            for fields in (line.split() for line in handle.readlines()[1:]):
                if fields[9] in inodes:
                    found.add((int(fields[1].rsplit(':', 1)[1], 16), int(fields[2].rsplit(':', 1)[1], 16), fields[3]))
    return found


PROBE = r'''#!/usr/bin/python
# The test's own module: what the interpreter that runs the modules holds (see test_mitogen.py).
import gc
import os
import signal
import sys
import threading

from ansible.module_utils.basic import AnsibleModule

''' + 'ESTABLISHED = %r\n\n\n' % ESTABLISHED + inspect.getsource(tcp_connections) + r'''

def holders(needles, mine):
    """What holds a string with one of ``needles`` in it: (type, where it is referred from)."""
    found = []
    gc.collect()
    for obj in gc.get_objects():
        if id(obj) in mine:
            continue
        if isinstance(obj, dict):
            items = list(obj.keys()) + list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = list(obj)
        else:
            continue
        for item in items:
            text = item.decode('utf-8', 'replace') if isinstance(item, bytes) else item
            if isinstance(text, str) and any(needle in text for needle in needles):
                referrers = sorted(set(type(r).__name__ for r in gc.get_referrers(obj)))
                found.append('%s referred from %s' % (type(obj).__name__, ', '.join(referrers)))
                break
    return found


def main():
    module = AnsibleModule(argument_spec=dict(reversed_needles=dict(type='list', elements='str', default=[])))
    # Given reversed, so that the probe's own arguments hold none of them.
    needles = tuple(needle[::-1] for needle in module.params['reversed_needles'])
    in_globals = sorted(name for name, mod in list(sys.modules.items())
                        if name.startswith('ansible_collections.celeryops') and mod is not None
                        and any(needle in repr(value) for value in vars(mod).values() for needle in needles))
    # Sockets first: the garbage collection of holders() would close what a task left unclosed.
    result = dict(pid=os.getpid(), main_thread=threading.current_thread() is threading.main_thread(),
                  sigalrm=repr(signal.getsignal(signal.SIGALRM)), sigterm=repr(signal.getsignal(signal.SIGTERM)),
                  itimer=list(signal.getitimer(signal.ITIMER_REAL)),
                  sockets=sorted(remote for local, remote, state in tcp_connections() if state == ESTABLISHED),
                  celeryops_modules=sorted(name for name in sys.modules if name.startswith('ansible_collections.celeryops')))
    result.update(module_globals=in_globals, holders=holders(needles, set([id(needles)])) if needles else [])
    module.exit_json(**result)


main()
'''


def mitogen_env():
    """The environment that runs ansible-playbook under mitogen_linear: nothing to add in the CI step that
    sets the strategy (it must be mitogen_linear there), else the strategy and Mitogen's plugin directory."""
    strategy = os.environ.get('ANSIBLE_STRATEGY')
    if strategy:
        assert strategy == 'mitogen_linear', 'ANSIBLE_STRATEGY is %s: the mitogen tests run under mitogen_linear' % strategy
        return {}
    try:
        import ansible_mitogen
    except ImportError:
        require(False, 'Mitogen for Ansible (pip install mitogen, see requirements-dev.txt)')
    return dict(ANSIBLE_STRATEGY='mitogen_linear',
                ANSIBLE_STRATEGY_PLUGINS=os.path.join(os.path.dirname(ansible_mitogen.__file__), 'plugins', 'strategy'))


def write_probe(ansible):
    library = os.path.join(ansible.tmpdir, 'library')   # beside the play: Ansible looks there for modules
    os.makedirs(library, exist_ok=True)
    with open(os.path.join(library, 'interpreter_probe.py'), 'w') as handle:
        handle.write(PROBE)


def probe(name, *needles):
    return {'name': name, 'interpreter_probe': dict(reversed_needles=[needle[::-1] for needle in needles])}


def handshake_bytes(vhost):
    """What RabbitMQ sends a client up to the end of the connection handshake (connection.start, tune and
    open-ok): after that many bytes, the next reply is the one to a call of the module's own."""
    import pika
    connection = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', AMQP_PORT, vhost,
                                                                   pika.PlainCredentials('guest', 'guest')))
    try:
        return connection._impl.bytes_received
    finally:
        connection.close()


def test_one_interpreter_keeps_nothing_of_one_task_for_the_next(redis_user, rabbit_user, rabbit_env, private, ansible):
    """Redis as user A (the URL in an option, then in the task's environment, then nowhere), RabbitMQ as guest
    (which warns), then RabbitMQ as user B three times (the time limit fires on a broker that stops answering
    after the handshake, a wrong password, then a run that works), in one play at -vvv."""
    write_probe(ansible)
    stalling = private.proxy(AMQP_PORT)
    stalling.pause_after(handshake_bytes(rabbit_env.vhost), 30)
    wrong = 'wrong-pw-%s' % os.urandom(8).hex()
    b_url = rabbit_user.url
    a_secrets = [redis_user.password, redis_user.url, urllib.parse.quote(redis_user.password, safe='')]
    b_secrets = [rabbit_user.password, urllib.parse.quote(rabbit_user.password, safe=''), wrong]
    stalled_url = b_url.replace(':%d/' % AMQP_PORT, ':%d/' % stalling.port)
    wrong_url = b_url.replace(urllib.parse.quote(rabbit_user.password), wrong)
    queue = dict(queues=['mitogen'], connect_timeout=2)
    tasks = [
        probe('before'),
        {'name': 'redis as A', 'celeryops.fleet.celery_queue_info': dict(queue, broker_url=redis_user.url)},
        {'name': 'events as A', 'celeryops.fleet.celery_events_info': dict(duration=1),
         'environment': dict(CELERY_BROKER_URL=redis_user.url)},
        {'name': 'no broker_url', 'celeryops.fleet.celery_queue_info': queue},
        probe('after A', redis_user.password, redis_user.url),
        {'name': 'guest', 'celeryops.fleet.celery_queue_info': dict(queue, broker_url=rabbit_env.url)},
        {'name': 'time limit', 'celeryops.fleet.celery_queue_info': dict(queue, broker_url=stalled_url)},
        probe('after the time limit'),
        {'name': 'wrong password', 'celeryops.fleet.celery_queue_info': dict(queue, broker_url=wrong_url)},
        {'name': 'rabbitmq as B', 'celeryops.fleet.celery_queue_info': dict(queue, broker_url=b_url)},
        probe('after B', redis_user.password, redis_user.url, rabbit_user.password, wrong),
    ]
    results = ansible.play(tasks, verbosity=3, env=mitogen_env())
    before, as_a, events_a, no_url, after_a, as_guest, timed_out, after_limit, refused, as_b, after_b = results
    output = ansible.last['stdout'] + ansible.last['stderr']

    # One interpreter, on its main thread, ran every task (without Mitogen each task is a process of its own).
    assert len(set(p['pid'] for p in (before, after_a, after_b))) == 1, (before, after_a, after_b)
    assert before['main_thread'] and after_b['main_thread']
    assert 'ansible_collections.celeryops.fleet.plugins.module_utils._module' in after_a['celeryops_modules'], after_a

    assert not as_a.get('failed'), as_a
    assert as_a['broker']['user'] == redis_user.name
    # The task's environment (CELERY_BROKER_URL, which broker_url falls back to) is gone for the next task.
    assert not events_a.get('failed') and events_a['broker']['user'] == redis_user.name, events_a
    assert no_url.get('failed') and no_url['option'] == 'broker_url' and 'broker_url is required' in no_url['msg'], no_url
    assert timed_out.get('failed') and 'timed out' in timed_out['msg'] and timed_out['option'] == 'connect_timeout', \
        timed_out
    assert refused.get('failed') and 'authentication failed' in refused['msg'], refused
    assert not as_b.get('failed'), as_b
    assert as_b['broker'] == dict(transport='amqp', tls=False, host='127.0.0.1', port=AMQP_PORT, user=rabbit_user.name,
                                  vhost=rabbit_env.vhost), as_b['broker']
    assert as_b['queues'][0]['name'] == 'mitogen', as_b
    # The warning of the guest/guest run (the user left out) is its own, not the next runs'.
    hidden = [w for w in as_guest.get('warnings', []) if 'broker.user is null' in w]
    assert len(hidden) == 1 and as_guest['broker']['user'] is None, as_guest
    for result in (timed_out, refused, as_b):
        assert not any('broker.user is null' in w for w in result.get('warnings', [])), result

    # Nothing of A in what came after it: results, warnings, errors.
    for label, result in (('no broker_url', no_url), ('time limit', timed_out), ('wrong password', refused),
                          ('rabbitmq as B', as_b)):
        text = json.dumps(result)
        for trace in a_secrets + [redis_user.name, 'redis', str(REDIS_PORT)]:
            assert trace not in text, (label, trace, text)
    # No password, of A or B, anywhere in the -vvv output; B's own no_log options are masked in B's results.
    for secret in a_secrets + b_secrets:
        assert secret not in output, secret
    for result in (timed_out, refused, as_b):
        if 'invocation' in result:   # not every callback keeps it
            assert result['invocation']['module_args']['broker_url'] == 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER', result

    # Nothing of A (after A) or of B (at the end) left in the interpreter: module globals, caches, any object;
    # no alarm, handler or socket of the time limit that fired.
    for state in (after_a, after_limit, after_b):
        assert state['module_globals'] == [] and state['holders'] == [], state
        assert state['itimer'] == [0.0, 0.0], state
        assert state['sigalrm'] == before['sigalrm'] and state['sigterm'] == before['sigterm'], (state, before)
        assert not set(state['sockets']) & set([REDIS_PORT, AMQP_PORT, stalling.port]), state


def module_utils():
    """The collection's _broker and _amqp_connection, imported from the work tree place_collection links."""
    for path in reversed((os.environ.get('ANSIBLE_COLLECTIONS_PATH') or '').split(os.pathsep)):
        if path and path not in sys.path:
            sys.path.insert(0, path)
    from ansible_collections.celeryops.fleet.plugins.module_utils import _amqp_connection, _broker
    return _broker, _amqp_connection


def test_a_connection_the_time_limit_gave_up_on_is_closed_at_once(rabbit_env, private):
    """The time limit fires on a broker that stops answering after the handshake: closing the connection closes its
    socket and pika's own pair at once, not when the garbage collector runs (which, in Mitogen's interpreter, can
    be many tasks later, the broker keeping what the connection held meanwhile)."""
    _broker, _amqp_connection = module_utils()
    stalling = private.proxy(AMQP_PORT)
    before = set((local, remote) for local, remote, state in tcp_connections())
    stalling.pause_after(handshake_bytes(rabbit_env.vhost), 30)
    broker = _broker.parse_broker_url(rabbit_env.url.replace(':%d/' % AMQP_PORT, ':%d/' % stalling.port), timeout=1)
    gc.disable()
    try:
        connection = _amqp_connection.AmqpConnection(broker)
        with pytest.raises(_broker.BrokerError, match='timed out'):
            connection.declare_passive('nothing')
        assert connection.broken
        connection.close()
        # What the proxy holds (its side of our connection, its connection to RabbitMQ) is the proxy's.
        left = [(local, remote) for local, remote in set((local, remote) for local, remote, state in tcp_connections()) - before
                if remote != AMQP_PORT and local != stalling.port]
        assert left == [], left
    finally:
        gc.enable()


def test_the_time_limit_fires_in_a_forked_task(rabbit_env, private, ansible):
    """Mitogen runs a task with mitogen_task_isolation=fork in a forked child (where the forking thread becomes
    the main one): the time limit (SIGALRM) guards it there too.

    (An async task is forked too, but cut off from the controller before the module runs: it cannot import the
    collection's module_utils, which Mitogen does not send ahead, and hangs until its async timeout. The README
    says so; not tested here.)"""
    write_probe(ansible)
    stalling = private.proxy(AMQP_PORT)
    stalling.pause_after(handshake_bytes(rabbit_env.vhost), 60)
    url = rabbit_env.url.replace(':%d/' % AMQP_PORT, ':%d/' % stalling.port)
    forked = {'mitogen_task_isolation': 'fork'}
    tasks = [probe('in the interpreter'),
             {'name': 'forked', 'vars': forked,
              'celeryops.fleet.celery_queue_info': dict(broker_url=url, queues=['mitogen'], connect_timeout=2)},
             dict(probe('forked probe'), vars=forked)]
    interpreter, stalled, forked_probe = ansible.play(tasks, env=mitogen_env())
    assert stalled.get('failed') and 'timed out after 2.5s' in stalled['msg'], stalled
    assert ansible.task_seconds()[1] < 2.5 + 10, ansible.task_seconds()
    assert forked_probe['pid'] != interpreter['pid'] and forked_probe['main_thread'], (interpreter, forked_probe)
