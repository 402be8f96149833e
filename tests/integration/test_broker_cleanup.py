"""celery_broker on real brokers and real Celery workers, through ansible-playbook.

Each finding is produced as test_broker_info.py produces it (a `celery inspect` killed before the replies came,
an events monitor killed, a worker SIGKILLed while holding prefetched messages), then cleaned: the targeted keys or
queues go, everything else stays byte-identical, the restored messages are run by a real worker exactly once,
check mode changes nothing and a second run changes nothing. The races (a consumer that attaches between the
detection and the delete) are timed in process, by running the same code with a hook between the two steps.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from harness import APP_DIR, account, publish, recorded, wait_for
from test_broker_info import EVENT_RECEIVER, kill_inspect_before_replies, queues_of

pytestmark = pytest.mark.module_logic

SEP = '\x06\x16'
REPLY_BINDING = b'_kombu.binding.reply.celery.pidbox'
# Keys live workers and our own broadcast rewrite on their own (kombu 5.7's binding deadlines, restore_visible's mutex).
NOISE = (b'_kombu.binding_deadlines', b'unacked_mutex')


def clean(ansible, check=False, diff=False, **args):
    return ansible.module('celery_broker', args, check=check, diff=diff)


def module_utils():
    for path in reversed((os.environ.get('ANSIBLE_COLLECTIONS_PATH') or '').split(os.pathsep)):
        if path and path not in sys.path:
            sys.path.insert(0, path)
    from ansible_collections.celeryops.fleet.plugins.module_utils import _broker, _hygiene, _queues
    return _broker, _hygiene, _queues


def params_of(**given):
    """Every option of celery_broker at its default, then ``given``: what the module hands the layer."""
    _broker, _hygiene, _queues = module_utils()
    spec = _broker.broker_argument_spec()
    spec.update(_queues.redis_transport_argument_spec())
    spec.update(_queues.queue_options_argument_spec())
    spec.update(_hygiene.cleanup_argument_spec())
    params = dict((name, option.get('default')) for name, option in spec.items())
    params.update(given)
    return params


def run_in_process(monkeypatch, params, patch_class, method, hook, check_mode=False):
    """broker_cleanup with ``hook()`` run right after ``patch_class.method`` (a step of the detection) returned."""
    _broker, _hygiene, _queues = module_utils()
    original = getattr(patch_class, method)

    def hooked(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        hook()
        return out
    monkeypatch.setattr(patch_class, method, hooked)
    result = {}
    _hygiene.broker_cleanup(params, _broker.broker_from_params(params), check_mode, result)
    return result


def without(snapshot, *keys):
    return dict((k, v) for k, v in snapshot.items() if k not in keys and k not in NOISE)


# -- Redis: orphan_reply ------------------------------------------------------------------------

HOSTILE = 'a*b[c]?\n\\x.reply.celery.pidbox'


@pytest.mark.mitogen
def test_orphan_replies_cleaned_nothing_else_touched(redis_env, ansible, workers):
    url, client = redis_env.url, redis_env.client
    worker = workers.start(url, 'late@cleanup', ['hq'])
    orphan = kill_inspect_before_replies(url, client, worker)
    worker.kill()
    # A reply queue with glob characters and a newline in its name, on two priority steps, nobody bound.
    client.lpush(HOSTILE, b'{"r": 1}', b'{"r": 2}')
    client.lpush(HOSTILE + SEP + '3', b'{"r": 3}')
    # Keys that are not reply lists, whatever their names look like to a glob.
    client.lpush('*', b'star')
    client.lpush('a*b[c]?\n\\x.reply.celery.pidboxes', b'not a reply list name')
    client.hset('evil.reply.celery.pidbox', 'a', 'b')   # a reply queue name, but not a list
    publish(url, 'fleet_tasks.add', 'hq', args=(1, 2), count=2)
    before = redis_env.snapshot()
    targets = (orphan.encode(), HOSTILE.encode(), (HOSTILE + SEP + '3').encode())
    assert all(k in before for k in targets)
    time.sleep(2.5)

    result = clean(ansible, check=True, diff=True, broker_url=url, kinds=['orphan_reply'], orphan_after=2)
    assert not result.get('failed'), result
    assert result['changed'] is True
    assert sorted(c['name'] for c in result['cleaned']) == sorted([orphan, HOSTILE]), result
    counts = dict((c['name'], c['count']) for c in result['cleaned'])
    assert counts[HOSTILE] == 3, result   # unbound: counted (LLEN cannot change what makes it an orphan)
    assert result['diff']['before'] == {'orphan_reply': sorted([orphan, HOSTILE])} and result['diff']['after'] == {}
    assert redis_env.snapshot() == before   # check mode changed nothing
    time.sleep(2.5)   # DUMP touched every key: idle again for orphan_after

    result = clean(ansible, diff=True, broker_url=url, kinds=['orphan_reply'], orphan_after=2)
    assert not result.get('failed'), result
    assert result['changed'] is True and result['kept'] == [], result
    assert sorted((c['name'], c['count']) for c in result['cleaned']) == sorted([(orphan, 1), (HOSTILE, 3)]), result
    after = redis_env.snapshot()
    assert not any(k in after for k in targets), after.keys()
    assert without(after) == without(before, *targets)   # every other key byte-identical (DUMP)

    result = clean(ansible, broker_url=url, kinds=['orphan_reply'], orphan_after=2)
    assert not result.get('failed') and result['changed'] is False and result['cleaned'] == [], result
    info = ansible.module('celery_broker_info', dict(broker_url=url, orphan_after=2, timeout=0.3))
    assert [f for f in info['findings'] if f['kind'] == 'orphan_reply'] == [], info


def test_reply_list_read_between_detection_and_delete_is_kept(redis_env, monkeypatch):
    """A bound reply list untouched for orphan_after is found; its client reads it (or a reply lands) before the
    delete: the delete's own check sees it touched and keeps it. The same for an unbound list bound again."""
    _broker, _hygiene, _queues = module_utils()
    client = redis_env.client
    oid = str(uuid.uuid4())
    bound = oid + '.reply.celery.pidbox'
    client.sadd(REPLY_BINDING, oid + SEP + SEP + bound)
    client.lpush(bound, b'{"late": "reply"}')
    unbound = 'c2.reply.celery.pidbox'
    client.lpush(unbound, b'{"late": "reply"}')
    time.sleep(2.5)

    def attach():
        client.lpush(bound, b'{"new": "reply"}')            # a live client's reply: touched now
        client.sadd(REPLY_BINDING, 'c2' + SEP + SEP + unbound)   # its client binds it again ...
        client.lrange(unbound, 0, 0)                        # ... and reads it
    params = params_of(broker_url=redis_env.url, kinds=['orphan_reply'], orphan_after=2.0)
    result = run_in_process(monkeypatch, params, _hygiene.RedisHygiene, 'orphan_replies', attach)
    assert sorted(f['name'] for f in result['findings']) == sorted([bound, unbound]), result
    assert result['cleaned'] == [] and result['changed'] is False, result
    assert sorted(k['name'] for k in result['kept']) == sorted([bound, unbound]), result
    assert client.llen(bound) == 2 and client.llen(unbound) == 1


# -- Redis: restore_overdue ---------------------------------------------------------------------

def test_restore_overdue_runs_each_message_exactly_once(redis_env, ansible, workers, tmp_path, monkeypatch):
    url, client = redis_env.url, redis_env.client
    record = str(tmp_path / 'record')
    monkeypatch.setenv('FLEET_RECORD_FILE', record)
    # A live worker holding an ETA task: held longer than the visibility timeout below, but its holder answers.
    workers.start(url, 'holder@cleanup', ['live'])
    live = publish(url, 'fleet_tasks.add', 'live', args=(1, 1), countdown=600)
    wait_for(lambda: client.hlen('unacked') == 1, what='the live worker to hold its ETA task')
    # A worker busy with a long task, its prefetched messages held in unacked, SIGKILLed.
    gone = workers.start(url, 'gone@cleanup', ['held'], concurrency=1, prefetch=4)
    publish(url, 'fleet_tasks.sleep', 'held', args=(60,))
    wait_for(lambda: 'fleet_tasks.sleep' in gone.log() and 'received' in gone.log(), what='the long task to start')
    ids = publish(url, 'fleet_tasks.record', 'held', count=2) + publish(url, 'fleet_tasks.record', 'held', priority=5)
    wait_for(lambda: client.hlen('unacked') >= 4, what='the prefetched messages to be held')
    gone.kill()
    held_tags = dict((tag, value) for tag, value in client.hgetall('unacked').items() if b'fleet_tasks.record' in value)
    assert len(held_tags) == 3, client.hgetall('unacked')
    client.hset('unacked', 'junk\n*tag', b'not json at all')          # junk is never restored
    client.zadd('unacked_index', {'junk\n*tag': time.time() - 9999})
    publish(url, 'fleet_tasks.add', 'other', args=(2, 2))
    waiting = publish(url, 'fleet_tasks.record', 'held')   # published after the worker died: it runs after the restored
    time.sleep(2.5)
    before = redis_env.snapshot()
    before_held = client.hgetall('unacked')
    before_index = client.zrange('unacked_index', 0, -1, withscores=True)

    args = dict(broker_url=url, restore_overdue=True, visibility_timeout=2, expected_nodes=['holder@cleanup'], timeout=10)
    result = clean(ansible, check=True, diff=True, **args)
    assert not result.get('failed'), result
    assert result['changed'] is True and sorted(r['id'] for r in result['restored']) == sorted(ids), result
    assert dict((r['id'], r['priority_step']) for r in result['restored'])[ids[2]] == 3, result
    assert result['diff']['before']['overdue_unacked'] == sorted(ids) and result['diff']['after']['overdue_unacked'] == []
    assert live[0] not in str(result['restored']) and result['nodes'] == ['holder@cleanup'], result
    now = redis_env.snapshot()
    assert client.hgetall('unacked') == before_held, 'held entries changed'
    assert client.zrange('unacked_index', 0, -1, withscores=True) == before_index, 'index changed'
    # A hash in hashtable encoding DUMPs in its dict's order, which Redis's incremental rehashing changes on reads
    # alone: the unacked hash and its index are compared by content (above), every other key by DUMP.
    assert without(now, b'unacked', b'unacked_index') == without(before, b'unacked', b'unacked_index')

    result = clean(ansible, diff=True, **args)
    assert not result.get('failed'), result
    assert result['changed'] is True and sorted(r['id'] for r in result['restored']) == sorted(ids), result
    assert result['not_restored'] == [], result
    # Gone from unacked and its index; the live holder's entry and the junk stay as they were.
    unacked = client.hgetall('unacked')
    assert not set(held_tags) & set(unacked) and not [t for t in held_tags if client.zscore('unacked_index', t)]
    assert b'junk\n*tag' in unacked and len(unacked) == 2 and live[0].encode() in b''.join(unacked.values())
    # At the head (the tail kombu pops) of the list of each one's priority step, marked redelivered.
    step0 = client.lrange('held', 0, -1)
    step3 = client.lrange('held' + SEP + '3', 0, -1)
    assert len(step0) == 3 and len(step3) == 1, (step0, step3)
    assert waiting[0].encode() in step0[0] and not [m for m in step0[1:] if waiting[0].encode() in m], step0
    assert all(b'"redelivered": true' in m for m in step0[1:] + step3) and b'"redelivered": true' not in step0[0]
    after = redis_env.snapshot()
    changed = (b'unacked', b'unacked_index', b'held', ('held' + SEP + '3').encode())
    assert without(after, *changed) == without(before, *changed)   # every other key byte-identical

    # A second run: nothing left to restore.
    result = clean(ansible, **args)
    assert not result.get('failed') and result['changed'] is False and result['restored'] == [], result

    # A real worker runs each restored message exactly once. (The junk goes first: kombu's own restore_visible,
    # which a starting worker runs, dies on an overdue entry that is not JSON.)
    client.hdel('unacked', 'junk\n*tag')
    client.zrem('unacked_index', 'junk\n*tag')
    workers.start(url, 'rescuer@cleanup', ['held'])
    wait_for(lambda: len(recorded(record)) >= 4, what='the restored tasks to run')
    time.sleep(2)
    lost, twice = account(ids + waiting, recorded(record))
    assert lost == [] and twice == {} and sorted(recorded(record)) == sorted(ids + waiting), recorded(record)


def test_restore_skips_an_entry_acknowledged_meanwhile(redis_env, monkeypatch, workers):
    """A worker acknowledges (or restores) a held message between the detection and the restore: nothing of it is
    pushed again."""
    _broker, _hygiene, _queues = module_utils()
    client = redis_env.client
    gone = workers.start(redis_env.url, 'gone@cleanup', ['held'], concurrency=1)
    publish(redis_env.url, 'fleet_tasks.sleep', 'held', args=(60,))
    wait_for(lambda: 'received' in gone.log(), what='the long task to start')
    ids = publish(redis_env.url, 'fleet_tasks.add', 'held', args=(1, 1), count=2)
    wait_for(lambda: client.hlen('unacked') >= 2, what='the prefetched messages to be held')
    gone.kill()
    tags = [t for t, v in client.hgetall('unacked').items() if ids[0].encode() in v]
    time.sleep(2.5)

    def acknowledge():
        client.hdel('unacked', *tags)
        client.zrem('unacked_index', *tags)
    params = params_of(broker_url=redis_env.url, restore_overdue=True, visibility_timeout=2.0, timeout=0.5)
    result = run_in_process(monkeypatch, params, _hygiene.RedisHygiene, 'overdue', acknowledge)
    assert [r['id'] for r in result['restored']] == [ids[1]], result
    assert [r['id'] for r in result['not_restored']] == [ids[0]] and 'meanwhile' in result['not_restored'][0]['reason']
    assert [m for m in client.lrange('held', 0, -1) if ids[0].encode() in m] == []


def test_key_prefix_sep_and_priority_steps(redis_env, ansible):
    """global_keyprefix (with glob characters), sep and priority_steps as the workers have them: the prefixed orphan
    and held message are the ones cleaned and restored, to the prefixed list of the message's step; another app's
    keys without the prefix stay."""
    client, prefix = redis_env.client, 'app[1]*?:'
    client.lpush(prefix + 'dead.reply.celery.pidbox', b'{}')
    client.lpush('other.reply.celery.pidbox', b'{}')               # not this app's
    task_id = str(uuid.uuid4())
    message = {'body': 'W1tdLCB7fSwge31d', 'content-encoding': 'utf-8', 'content-type': 'application/json',
               'headers': {'id': task_id, 'task': 'fleet_tasks.add', 'lang': 'py'},
               'properties': {'priority': 6, 'delivery_tag': 'tag-1', 'body_encoding': 'base64',
                              'delivery_info': {'exchange': '', 'routing_key': 'q'}}}
    for key_prefix in (prefix, ''):   # the same entry in both apps: only the prefixed one is restored
        client.hset(key_prefix + 'unacked', 'tag-1', json.dumps([message, '', 'q']))
        client.zadd(key_prefix + 'unacked_index', {'tag-1': time.time() - 4000})
    before = redis_env.snapshot()
    args = dict(broker_url=redis_env.url, global_keyprefix=prefix, sep=':', priority_steps=[0, 5],
                kinds=['orphan_reply'], restore_overdue=True, timeout=0.3, orphan_after=3600)
    result = clean(ansible, **args)
    assert not result.get('failed'), result
    assert [c['name'] for c in result['cleaned']] == ['dead.reply.celery.pidbox'], result
    assert [(r['id'], r['priority_step'], r['queues']) for r in result['restored']] == [(task_id, 5, ['q'])], result
    [restored] = client.lrange(prefix + 'q:5', 0, -1)
    assert json.loads(restored)['headers']['redelivered'] is True and json.loads(restored)['headers']['id'] == task_id
    changed = ((prefix + 'dead.reply.celery.pidbox').encode(), (prefix + 'unacked').encode(),
               (prefix + 'unacked_index').encode(), (prefix + 'q:5').encode())
    assert without(redis_env.snapshot(), *changed) == without(before, *changed)
    assert client.hlen(prefix + 'unacked') == 0 and client.zcard(prefix + 'unacked_index') == 0
    assert clean(ansible, **args)['changed'] is False


@pytest.mark.parametrize('args, option, text', [
    (dict(), 'kinds', 'nothing to do'),
    (dict(kinds=['no_consumer']), 'kinds', 'no_consumer'),
    (dict(kinds=['orphan_reply'], orphan_after=0), 'orphan_after', 'positive number of seconds'),
    (dict(restore_overdue=True, visibility_timeout=-1), 'visibility_timeout', 'positive number of seconds'),
    (dict(restore_overdue=True, expected_nodes=['nohost']), 'expected_nodes', 'is not a node name'),
])
def test_bad_input_names_the_option(redis_env, ansible, args, option, text):
    before = redis_env.snapshot()
    result = clean(ansible, broker_url=redis_env.url, **args)
    assert result.get('failed') and text in result['msg'], result
    assert result.get('option', option) == option and 'Traceback' not in result['msg'], result
    assert redis_env.snapshot() == before


# -- RabbitMQ -----------------------------------------------------------------------------------

def stale_event_queue(rabbit):
    """A durable events queue whose monitor was SIGKILLed (as test_broker_info makes it); its name."""
    monitor = subprocess.Popen([sys.executable, '-c', EVENT_RECEIVER, rabbit.url], env=dict(os.environ, PYTHONPATH=APP_DIR),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        return wait_for(lambda: [q['name'] for q in queues_of(rabbit)
                                 if q['name'].startswith('celeryev.') and q.get('consumers')], what='the monitor')[0]
    finally:
        os.killpg(monitor.pid, signal.SIGKILL)
        monitor.wait(10)


def orphan_reply_queue(rabbit, name=None):
    """A reply queue its client declared and died before consuming, a reply in it."""
    import pika
    reply = name or '%s.reply.celery.pidbox' % uuid.uuid4()
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    channel = connection.channel()
    channel.queue_declare(reply, auto_delete=True)
    channel.basic_publish('', reply, b'{"ping": "pong"}')
    connection.close()
    rabbit.wait_for(reply, lambda q: q.get('messages') == 1)
    return reply


def counts(rabbit):
    return dict((q['name'], q.get('messages')) for q in queues_of(rabbit))


def test_rabbitmq_stale_event_and_orphan_reply_queues_deleted(rabbit_env, ansible, workers):
    url = rabbit_env.url
    stale = stale_event_queue(rabbit_env)
    workers.start(url, 'events@cleanup', ['eq'], events=True)
    rabbit_env.wait_for(stale, lambda q: q.get('consumers') == 0 and (q.get('messages') or 0) > 0)
    reply = orphan_reply_queue(rabbit_env)
    # Glob and URL characters (a newline in a queue name stalls the AMQP client that declares it: not made here).
    hostile = orphan_reply_queue(rabbit_env, 'x*[?] %2F/#\u00e9.reply.celery.pidbox')
    publish(url, 'fleet_tasks.add', 'forgotten', args=(1, 2), count=3)
    rabbit_env.wait_for('forgotten', lambda q: q.get('messages_ready') == 3)
    others = dict((name, n) for name, n in counts(rabbit_env).items() if name not in (stale, reply, hostile))
    assert 'forgotten' in others and [n for n in others if n.endswith('.pidbox')], others   # the worker's own

    args = dict(broker_url=url, kinds=['orphan_reply', 'stale_event_queue'])
    result = clean(ansible, check=True, diff=True, **args)
    assert not result.get('failed'), result
    assert sorted((c['kind'], c['name']) for c in result['cleaned']) == sorted(
        [('orphan_reply', reply), ('orphan_reply', hostile), ('stale_event_queue', stale)]), result
    assert result['changed'] is True and result['diff']['after'] == {}, result
    assert set([stale, reply, hostile]) <= set(counts(rabbit_env))   # check mode deleted nothing

    result = clean(ansible, diff=True, **args)
    assert not result.get('failed'), result
    assert sorted(c['name'] for c in result['cleaned']) == sorted([stale, reply, hostile]) and result['kept'] == [], result
    assert dict((c['name'], c['count']) for c in result['cleaned'])[reply] == 1
    left = counts(rabbit_env)
    assert not set([stale, reply, hostile]) & set(left), left
    assert dict((n, left.get(n)) for n in others) == others   # the other queues and their message counts
    assert rabbit_env.queue('forgotten')['messages_ready'] == 3

    result = clean(ansible, **args)
    assert not result.get('failed') and result['changed'] is False and result['cleaned'] == [], result
    # Only the kinds asked for: with kinds=[orphan_reply] a stale event queue stays.
    stale = stale_event_queue(rabbit_env)
    rabbit_env.wait_for(stale, lambda q: q.get('consumers') == 0)
    result = clean(ansible, broker_url=url, kinds=['orphan_reply'])
    assert not result.get('failed') and result['changed'] is False and stale in counts(rabbit_env), result
    result = clean(ansible, broker_url=url, restore_overdue=True)
    assert result.get('failed') and result['option'] == 'restore_overdue', result


@pytest.mark.parametrize('step', ['declare_passive', 'queue_records'])
def test_rabbitmq_consumer_that_attaches_before_the_delete_keeps_its_queue(rabbit_env, monkeypatch, step):
    """A consumer attaches after the management API listed the queue without one (queue_records), or even after
    the passive declare saw none (declare_passive: queue.delete's if_unused refuses it): never deleted."""
    import pika
    _broker, _hygiene, _queues = module_utils()
    from ansible_collections.celeryops.fleet.plugins.module_utils import _amqp_connection
    reply = orphan_reply_queue(rabbit_env)
    consumer = pika.BlockingConnection(pika.URLParameters(rabbit_env.url))
    try:
        channel = consumer.channel()

        def attach():
            if not getattr(attach, 'done', False):
                attach.done = True
                channel.basic_consume(reply, lambda *a: None, auto_ack=False)
        patched = _amqp_connection.AmqpConnection if step == 'declare_passive' else _hygiene.AmqpHygiene
        params = params_of(broker_url=rabbit_env.url, kinds=['orphan_reply'])
        result = run_in_process(monkeypatch, params, patched, step, attach)
        assert [f['name'] for f in result['findings']] == [reply], result
        assert result['cleaned'] == [] and result['changed'] is False, result
        [kept] = result['kept']
        assert kept['name'] == reply and ('if_unused' in kept['reason'] if step == 'declare_passive'
                                          else 'consumer is on it' in kept['reason']), kept
        assert rabbit_env.queue(reply)['name'] == reply
    finally:
        consumer.close()
