"""celery_queue (purge, filtered purge, trim) against a real Redis: exact effects, nothing else touched.

The reference is the database itself: DUMP of every key before and after (priority sub-queues, the
unacked hash and index, kombu's binding sets), and the raw list elements of the target queue.
"""

import json
import time

import pytest

from harness import publish


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic

ADD = 'fleet_tasks.add'
MAIL = 'fleet_tasks.mail'
SLEEP = 'fleet_tasks.sleep'
SEP = b'\x06\x16'
STEPS = (0, 3, 6, 9)
FOREIGN = b'not a kombu message'  # something else pushed onto the list: a filtered purge keeps it


def step_key(queue, step):
    return queue.encode() + (SEP + str(step).encode() if step else b'')


def ids_in_run_order(client, queue, steps=STEPS):
    """Task ids of a queue in the order workers would take them (tail first, low steps first)."""
    out = []
    for step in steps:
        out.extend(json.loads(raw)['headers']['id'] for raw in reversed(client.lrange(step_key(queue, step), 0, -1)))
    return out


def queue_keys(queue):
    return [step_key(queue, step) for step in STEPS]


def elements(client, queue):
    """step -> the raw elements of that sub-queue, as stored (head first)."""
    return dict((step, client.lrange(step_key(queue, step), 0, -1)) for step in STEPS)


def run_order(lists):
    """Raw elements in the order workers take them: low steps first, each list from its tail."""
    return [raw for step in STEPS for raw in reversed(lists[step])]


def task_of(raw):
    try:
        return json.loads(raw)['headers']['task']
    except ValueError:
        return None


@pytest.fixture
def loaded(redis_env, workers):
    """A database as a busy broker has it: queue 'target' at every priority step with tasks interleaved
    (and a foreign element); messages of 'target' and 'held' taken by workers that were then killed, so
    they stay in the unacked hash and index; bystanders at several steps, one named like the target;
    and keys that are no queue. Returns the snapshot of every key."""
    url, client = redis_env.url, redis_env.client
    holders = [workers.start(url, 'hold-%s@fleet' % queue, [queue], concurrency=1, prefetch=1, ready=False)
               for queue in ('held', 'target')]
    for holder in holders:
        holder.wait_ready()
    publish(url, SLEEP, 'held', args=(60,), count=3)
    publish(url, SLEEP, 'target', args=(60,), count=3)
    deadline, steady = time.monotonic() + 30, 0
    while time.monotonic() < deadline and steady < 3:
        queues = sorted(json.loads(raw)[2] for raw in client.hvals('unacked'))
        steady = steady + 1 if queues == ['held', 'target'] and client.zcard('unacked_index') == 2 else 0
        time.sleep(0.2)
    for holder in holders:
        holder.kill()  # not a clean close: what they held stays unacked
    assert sorted(json.loads(raw)[2] for raw in client.hvals('unacked')) == ['held', 'target']

    for i in range(8):
        publish(url, MAIL if i % 3 == 0 else ADD, 'target', args=('m%d' % i,) if i % 3 == 0 else (i, i))
    client.lpush('target', FOREIGN)
    publish(url, MAIL, 'target', args=('three',), count=3, priority=3)  # step 3: only MAIL
    publish(url, ADD, 'target', args=(6, 6), count=2, priority=6)      # step 6: only ADD
    publish(url, MAIL, 'target', args=('nine',), priority=9)
    publish(url, ADD, 'target', args=(9, 9), priority=9)
    for queue in ('other', 'targetx', 'targe'):
        publish(url, MAIL, queue, args=('o',), count=2)
        publish(url, ADD, queue, args=(1, 1), count=2, priority=6)
    publish(url, MAIL, 'targetx', args=('x',), priority=3)
    client.set('unrelated', 'value')
    client.hset('some-hash', 'field', 'target')
    snapshot = redis_env.snapshot()
    # The workers bound their queues; a publisher binds a queue once per process (kombu keeps its
    # bindings in memory), so the bystanders published to may have none in this database.
    for key in (b'unacked', b'unacked_index', b'_kombu.binding.target', b'_kombu.binding.held',
                step_key('other', 6), step_key('targetx', 3)):
        assert key in snapshot, key
    assert all(elements(client, 'target')[step] for step in STEPS)
    return snapshot


@pytest.mark.mitogen
def test_purge_check_real_idempotent_and_nothing_else_touched(redis_env, loaded, ansible):
    client = redis_env.client
    total = sum(len(lst) for lst in elements(client, 'target').values())
    args = dict(broker_url=redis_env.url, queues=['target'])

    check = ansible.module('celery_queue', args, check=True, diff=True)
    assert check['changed'] is True
    assert check['queues'] == [dict(name='target', exists=True, before=total, removed=total, after=0, unacked=1)]
    assert check['diff'] == dict(before={'target': total}, after={'target': 0})
    assert redis_env.snapshot() == loaded  # check mode changed nothing at all

    real, again = ansible.play([
        {'celeryops.fleet.celery_queue': args, 'diff': True},
        {'celeryops.fleet.celery_queue': args},
    ])
    assert real['changed'] is True
    assert real['queues'] == [dict(name='target', exists=True, before=total, removed=total, after=0, unacked=1)]
    assert any("queue 'target' has 1 messages held unacknowledged" in w for w in real.get('warnings', []))
    assert again['changed'] is False and again['queues'][0]['removed'] == 0
    # Only the target's own lists went; its unacked message, its binding and every other key are as they were.
    assert redis_env.snapshot() == dict((k, v) for k, v in loaded.items() if k not in queue_keys('target'))


def test_filtered_purge_keeps_the_rest_byte_for_byte_in_order(redis_env, loaded, ansible):
    client = redis_env.client
    before = elements(client, 'target')
    mails = sum(1 for lst in before.values() for raw in lst if task_of(raw) == MAIL)
    total = sum(len(lst) for lst in before.values())
    args = dict(broker_url=redis_env.url, queues=['target'], task_names=[MAIL])

    check = ansible.module('celery_queue', args, check=True)
    assert check['changed'] is True and check['queues'][0]['removed'] == mails
    assert redis_env.snapshot() == loaded

    real, again = ansible.play([{'celeryops.fleet.celery_queue': args}, {'celeryops.fleet.celery_queue': args}])
    assert real['queues'][0] == dict(name='target', exists=True, before=total, removed=mails, after=total - mails,
                                     unacked=1)
    assert again['changed'] is False and again['queues'][0]['removed'] == 0
    # Per sub-queue: exactly the other messages, the same bytes, in the same order; step 3 held only MAIL.
    after = elements(client, 'target')
    assert after == dict((step, [raw for raw in before[step] if task_of(raw) != MAIL]) for step in STEPS)
    assert after[3] == [] and FOREIGN in after[0]
    assert redis_env.snapshot(exclude=queue_keys('target')) == dict(
        (k, v) for k, v in loaded.items() if k not in queue_keys('target'))


def test_an_empty_task_names_purges_nothing(redis_env, ansible):
    """task_names: "{{ picked }}" with an empty picked fails naming task_names, and every message stays (it
    purged them all: an empty filter read as no filter)."""
    publish(redis_env.url, MAIL, 'emptyfilter', count=3)
    before = redis_env.client.lrange('emptyfilter', 0, -1)
    result, check = ansible.play([
        {'celeryops.fleet.celery_queue': {'broker_url': redis_env.url, 'queues': ['emptyfilter'],
                                          'task_names': '{{ picked }}'}, 'vars': {'picked': []}},
        {'celeryops.fleet.celery_queue': {'broker_url': redis_env.url, 'queues': ['emptyfilter'], 'task_names': []},
         'check_mode': True},
    ])
    for outcome in (result, check):
        assert outcome.get('failed') and 'task_names is an empty list' in outcome['msg'], outcome
    assert redis_env.client.lrange('emptyfilter', 0, -1) == before and len(before) == 3


def test_filtered_purge_of_lists_longer_than_one_read(redis_env, ansible):
    """The list is read in chunks (READ_CHUNK, 2000 elements in _redis_queues): a purge of one task
    over 4001 and 2000 elements keeps every other element, in order, byte for byte."""
    client = redis_env.client
    lists = {}
    for step, size in ((0, 4001), (3, 2000)):
        lists[step] = [json.dumps({'body': '', 'headers': {'task': (ADD, MAIL, MAIL)[i % 3], 'id': '%d-%d' % (step, i)}})
                       .encode() for i in range(size)]
        lists[step][1000] = FOREIGN
        client.rpush(step_key('long', step), *lists[step])
    kept = dict((step, [raw for raw in lists.get(step, []) if task_of(raw) != MAIL]) for step in STEPS)
    removed = 6001 - sum(len(k) for k in kept.values())
    result = ansible.module('celery_queue', dict(broker_url=redis_env.url, queues=['long'], task_names=[MAIL]))
    assert result['queues'][0] == dict(name='long', exists=True, before=6001, removed=removed, after=6001 - removed,
                                       unacked=0)
    assert elements(client, 'long') == kept


def test_trim_across_priority_steps_byte_for_byte(redis_env, loaded, ansible):
    client = redis_env.client
    order = run_order(elements(client, 'target'))
    total = len(order)

    def expect_kept(kept):
        """The sub-queues hold exactly ``kept`` (raw elements), each in its place."""
        assert run_order(elements(client, 'target')) == kept
        assert redis_env.snapshot(exclude=queue_keys('target')) == dict(
            (k, v) for k, v in loaded.items() if k not in queue_keys('target'))

    check = ansible.module('celery_queue', dict(broker_url=redis_env.url, queues=['target'], state='trimmed',
                                                keep=5), check=True)
    assert check['queues'][0]['removed'] == total - 5
    assert redis_env.snapshot() == loaded

    oldest = ansible.module('celery_queue', dict(broker_url=redis_env.url, queues=['target'], state='trimmed',
                                                 keep=total - 3))
    assert oldest['changed'] and oldest['queues'][0]['removed'] == 3
    expect_kept(order[3:])

    # Dropping the newest empties steps 9, 6 and 3 and cuts step 0 from its head.
    newest = ansible.module('celery_queue', dict(broker_url=redis_env.url, queues=['target'], state='trimmed',
                                                 keep=4, drop='newest'))
    assert newest['queues'][0] == dict(name='target', exists=True, before=total - 3, removed=total - 7, after=4,
                                       unacked=1)
    expect_kept(order[3:7])

    again = ansible.module('celery_queue', dict(broker_url=redis_env.url, queues=['target'], state='trimmed',
                                                keep=4))
    assert again['changed'] is False
    expect_kept(order[3:7])


def test_missing_queue_is_not_a_failure(redis_env, ansible):
    result = ansible.module('celery_queue', dict(broker_url=redis_env.url, queues=['ghost']))
    assert result['changed'] is False
    assert result['queues'] == [dict(name='ghost', exists=False, before=0, removed=0, after=0, unacked=0)]


def test_unacked_messages_are_reported_not_purged(redis_env, ansible, workers):
    url, client = redis_env.url, redis_env.client
    workers.start(url, 'hold1@fleet', ['held'], concurrency=1, prefetch=2)
    publish(url, SLEEP, 'held', args=(30,), count=5)
    deadline = time.monotonic() + 20
    while client.hlen('unacked') < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    unacked_before = client.hgetall('unacked')
    result = ansible.module('celery_queue', dict(broker_url=url, queues=['held']))
    assert result['queues'][0]['unacked'] == 2
    assert result['queues'][0]['removed'] == result['queues'][0]['before']
    assert any("queue 'held' has 2 messages held unacknowledged" in w for w in result['warnings'])
    assert client.hgetall('unacked') == unacked_before


def test_filtered_purge_of_large_elements_over_several_reads_keeps_order_ttl_and_foreign(redis_env, ansible):
    """Elements of 300 kB are read a few at a time (CHUNK_BYTES in _redis_queues): the purge streams them to a key
    of its own and renames it over the list. Each sub-queue keeps its other elements in order, byte for byte, and
    its own TTL (or none); one left with nothing goes; no key of the purge's own is left behind."""
    client = redis_env.client
    pad = 'x' * (300 * 1024)
    lists = {}
    for step, size in ((0, 60), (3, 30), (6, 12)):
        lists[step] = [json.dumps({'body': pad, 'headers': {'task': (ADD, MAIL, MAIL)[i % 3], 'id': '%d-%d' % (step, i)}})
                       .encode() for i in range(size)]
        client.rpush(step_key('big', step), *lists[step])
    lists[0][0] = lists[0][41] = FOREIGN  # first and deep inside: foreign elements are kept where they are
    client.lset(step_key('big', 0), 0, FOREIGN)
    client.lset(step_key('big', 0), 41, FOREIGN)
    lists[6] = [raw for raw in lists[6] if task_of(raw) == MAIL]  # step 6: only MAIL, emptied by the purge
    client.delete(step_key('big', 6))
    client.rpush(step_key('big', 6), *lists[6])
    client.pexpire(step_key('big', 0), 600000)
    client.pexpire(step_key('big', 6), 600000)
    total = sum(len(lst) for lst in lists.values())
    kept = dict((step, [raw for raw in lists.get(step, []) if task_of(raw) != MAIL]) for step in STEPS)
    args = dict(broker_url=redis_env.url, queues=['big'], task_names=[MAIL])

    check = ansible.module('celery_queue', args, check=True)
    assert check['queues'][0]['removed'] == total - sum(len(k) for k in kept.values())
    assert elements(client, 'big') == dict((step, lists.get(step, [])) for step in STEPS)

    result = ansible.module('celery_queue', args)
    assert result['queues'][0] == dict(name='big', exists=True, before=total, removed=check['queues'][0]['removed'],
                                       after=sum(len(k) for k in kept.values()), unacked=0)
    assert elements(client, 'big') == kept
    assert 0 < client.pttl(step_key('big', 0)) <= 600000
    assert client.pttl(step_key('big', 3)) == -1
    assert sorted(client.keys('*')) == sorted([step_key('big', 0), step_key('big', 3)])


def test_filtered_purge_retries_while_the_queue_changes_and_gives_up_cleanly(redis_env, monkeypatch):
    """A producer pushing while the list is filtered: the pass is dropped (nothing written to the list, the
    purge's own key removed) and tried again; one that never stops gets the error after REWRITE_ATTEMPTS, with
    nothing removed and nothing of the purge left behind. Driven in process, where a push can be timed between
    two reads."""
    from test_adversarial_redis import module_utils, open_queues
    _queues, _redis_queues = module_utils()
    client = redis_env.client
    pad = 'x' * (200 * 1024)
    original = [json.dumps({'body': pad, 'headers': {'task': (ADD, MAIL)[i % 2], 'id': str(i)}}).encode()
                for i in range(40)]
    client.rpush('busy', *original)
    pushes = {'left': 2}
    real_push = _redis_queues.RedisQueues._push

    def push_then_produce(self, key, elements):
        done = real_push(self, key, elements)
        if pushes['left'] > 0:  # a producer's LPUSH between two chunks of the purge
            pushes['left'] -= 1
            client.lpush('busy', json.dumps({'body': '', 'headers': {'task': ADD, 'id': 'new%d' % pushes['left']}}))
        return done
    monkeypatch.setattr(_redis_queues.RedisQueues, '_push', push_then_produce)

    queues = open_queues(redis_env.url)
    try:
        removed = queues.purge('busy', [MAIL])
        assert removed == 20
        assert client.lrange('busy', 0, -1) == [json.dumps({'body': '', 'headers': {'task': ADD, 'id': 'new%d' % i}})
                                                .encode() for i in (0, 1)] + original[0::2]
        assert sorted(client.keys('*')) == [b'busy']

        client.rpush('busy', *original[1:9:2])
        pushes['left'] = 10 ** 6
        before = client.lrange('busy', 0, -1)
        with pytest.raises(_queues.BrokerError) as error:
            queues.purge('busy', [MAIL])
        assert 'kept changing while it was being filtered (%d attempts); nothing was removed' % (
            _redis_queues.REWRITE_ATTEMPTS) in str(error.value)
        after = client.lrange('busy', 0, -1)
        added = len(after) - len(before)  # the producer's pushes, at the head; the rest as it was
        assert added >= _redis_queues.REWRITE_ATTEMPTS and after[added:] == before
        assert sorted(client.keys('*')) == [b'busy']
    finally:
        queues.close()
