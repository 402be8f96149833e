"""Hostile or strange content of a Redis broker: what the Redis queue modules read must not make them misread a
queue, crash, hang or hold the whole backlog in memory.

The reference is the database itself (raw keys, elements and TTLs). A few tests drive RedisQueues in process
against the real Redis, where what they check (the size of every reply read, a queue changed between two reads)
cannot be seen from a playbook.
"""

import json
import os
import sys

import pytest


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic

SEP = '\x06\x16'
ADD = 'fleet_tasks.add'
MAIL = 'fleet_tasks.mail'
FOREIGN = b'not a kombu message'


def module_utils():
    """The collection's _redis_queues and _queues, imported from the work tree place_collection links."""
    for path in reversed((os.environ.get('ANSIBLE_COLLECTIONS_PATH') or '').split(os.pathsep)):
        if path and path not in sys.path:
            sys.path.insert(0, path)
    from ansible_collections.celeryops.fleet.plugins.module_utils import _queues, _redis_queues
    return _queues, _redis_queues


def open_queues(url):
    _queues, _redis_queues = module_utils()
    params = dict(broker_url=url, broker_password=None, connect_timeout=10, tls_ca_file=None, tls_cert_file=None,
                  tls_key_file=None, tls_verify=True, global_keyprefix='', priority_steps=[0, 3, 6, 9], sep=SEP,
                  management_url=None, management_user=None, management_password=None,
                  management_validate_certs=True)
    return _queues.open_queues(params)


def message(task, size, tag):
    """A kombu-style element of about ``size`` bytes (its body padded)."""
    return json.dumps({'body': 'x' * size, 'content-type': 'application/json',
                       'headers': {'task': task, 'id': tag}, 'properties': {'body_encoding': 'base64'}}).encode()


# -- item 11: a queue name that kombu reads as another queue's priority list ---------------------

@pytest.mark.parametrize('module', ['celery_queue_info', 'celery_queue'])
def test_a_name_that_is_a_priority_list_of_another_queue_is_refused(redis_env, ansible, module):
    client = redis_env.client
    client.rpush('default' + SEP + '3', message(ADD, 10, 'p3'))
    before = redis_env.snapshot()
    result = ansible.module(module, dict(broker_url=redis_env.url, queues=['ok', 'default' + SEP + '3']))
    assert result.get('failed'), result
    assert 'queues' in result['msg'] and '\\x06\\x16' in result['msg'], result['msg']
    assert "'default'" in result['msg'] and 'priority step 3' in result['msg'], result['msg']
    assert SEP not in result['msg']  # the separator is shown escaped, never raw
    assert redis_env.snapshot() == before
    # With sep ':' the same holds for 'default:3'; a separator not followed by a digit is a plain name.
    custom = ansible.module(module, dict(broker_url=redis_env.url, queues=['default:3'], sep=':'))
    assert custom.get('failed') and "sep (':')" in custom['msg'], custom
    plain = ansible.module(module, dict(broker_url=redis_env.url, queues=['default:x'], sep=':'))
    assert not plain.get('failed'), plain


def test_discovery_does_not_list_a_priority_list_as_a_queue(redis_env, ansible):
    """A binding naming 'default' + sep + '3' (declared by anyone) is no queue of its own: its messages are
    step 3 of 'default', and are counted there. (The sep in the name makes the binding member split into four
    parts, which kombu cannot read either: discovery leaves it out.)"""
    client = redis_env.client
    client.sadd('_kombu.binding.default', 'default' + SEP + SEP + 'default')
    client.sadd('_kombu.binding.odd', 'odd' + SEP + SEP + 'default' + SEP + '3')
    client.rpush('default' + SEP + '3', message(ADD, 10, 'a'), message(ADD, 10, 'b'))
    result = ansible.module('celery_queue_info', dict(broker_url=redis_env.url))
    assert [(q['name'], q['messages'], q['priorities']['3']) for q in result['queues']] == [('default', 2, 2)]


# -- item 10: every read bounded by bytes --------------------------------------------------------

def test_no_reply_read_holds_more_than_the_byte_bound(redis_env, monkeypatch):
    """Breakdown, peek, filtered purge (check mode and real) and the unacked count read lists of 512 kB elements
    in replies of at most CHUNK_BYTES each; what they return is still exact."""
    import redis.connection
    _queues, _redis_queues = module_utils()
    client = redis_env.client
    big = 512 * 1024
    lists = {0: [message((ADD, MAIL)[i % 2], big, '0-%d' % i) for i in range(24)], 3: [message(MAIL, big, '3-0')]}
    lists[0][5] = FOREIGN
    for step, elements in lists.items():
        client.rpush('big' + (SEP + str(step) if step else ''), *elements)
    held = lists[0][0]
    client.sadd('_kombu.binding.big', 'big' + SEP + SEP + 'big')
    client.hset('unacked', mapping=dict(('tag%d' % i, json.dumps([json.loads(held), 'big', 'big'])) for i in range(12)))

    replies = []
    real = redis.connection.AbstractConnection.read_response

    def measured(self, *args, **kwargs):
        reply = real(self, *args, **kwargs)
        replies.append(size_of(reply))
        return reply
    monkeypatch.setattr(redis.connection.AbstractConnection, 'read_response', measured)

    queues = open_queues(redis_env.url)
    try:
        states = _queues.queue_states(queues, ['big'])
        tasks = queues.breakdown('big')
        peeked = queues.peek('big', 30)
        would = queues.purge('big', [MAIL], check_mode=True)
        removed = queues.purge('big', [MAIL])
    finally:
        queues.close()
    monkeypatch.undo()
    assert max(replies) <= _redis_queues.CHUNK_BYTES, sorted(replies)[-5:]
    everything = lists[0] + lists[3]
    mails = sum(1 for raw in everything if MAIL.encode() in raw)
    assert states[0]['unacked'] == 12 and states[0]['messages'] == len(everything)
    assert (tasks[ADD], tasks[MAIL]) == (len(everything) - mails - 1, mails)  # and the foreign one: undecodable
    assert [m.get('id') for m in peeked] == [identity(raw) for raw in reversed(lists[0])] + ['3-0']
    assert would == removed == mails
    assert client.lrange('big', 0, -1) == [raw for raw in lists[0] if MAIL.encode() not in raw]
    assert client.exists('big' + SEP + '3') == 0


def identity(raw):
    return None if raw == FOREIGN else json.loads(raw)['headers']['id']


def size_of(reply):
    if isinstance(reply, (bytes, str)):
        return len(reply)
    if isinstance(reply, (list, tuple)):
        return sum(size_of(item) for item in reply)
    return 0


def test_chunks_adapt_to_element_sizes(redis_env):
    """Small elements are read READ_CHUNK at a time after a short start, large ones as many as fit CHUNK_BYTES,
    one larger than the bound alone; every element comes back once, in order, from the head or from the tail."""
    _queues, _redis_queues = module_utils()
    client = redis_env.client
    lists = dict(small=[message(ADD, 100, 's%d' % i) for i in range(10000)],
                 large=[message(ADD, 300 * 1024, 'l%d' % i) for i in range(40)],
                 huge=[message(ADD, _redis_queues.CHUNK_BYTES + 1, 'h%d' % i) for i in range(3)])
    for key, elements in lists.items():
        client.rpush(key, *elements)
    queues = open_queues(redis_env.url)
    try:
        chunks = dict((key, list(queues._chunks(key.encode()))) for key in lists)
        from_tail = list(queues._chunks(b'large', limit=25, from_tail=True))
    finally:
        queues.close()
    for key, elements in lists.items():
        assert [raw for chunk in chunks[key] for raw in chunk] == elements
    assert max(map(len, chunks['small'])) == _redis_queues.READ_CHUNK
    assert len(chunks['small']) <= 4 + 10000 // _redis_queues.READ_CHUNK + 1
    assert all(sum(map(len, chunk)) <= _redis_queues.CHUNK_BYTES for chunk in chunks['large'])
    assert len(chunks['large']) <= 1 + 40 // (_redis_queues.CHUNK_BYTES // len(lists['large'][0])) + 1
    assert [len(chunk) for chunk in chunks['huge']] == [1, 1, 1]
    assert [raw for chunk in from_tail for raw in chunk] == lists['large'][::-1][:25]


# -- item 14 and the unacked hash: entries that are not what kombu writes -------------------------

def test_hostile_unacked_entries_are_counted_as_unattributable(redis_env, ansible):
    """Entries of the unacked hash that do not decode, or whose exchange or routing key is not a string, count
    against no queue; nothing crashes. A binding pattern that would make a regular expression backtrack for
    ever is matched in linear time."""
    client = redis_env.client
    client.sadd('_kombu.binding.tasks', 'work' + SEP + SEP + 'work')
    client.sadd('_kombu.binding.topic', '#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.x' + SEP + '^pattern$' + SEP + 'deep')
    good = json.dumps([{'body': ''}, 'tasks', 'work'])
    client.hset('unacked', mapping={
        'deep': '[' * 200000,
        'list-exchange': json.dumps([{}, ['tasks'], 'work']),
        'list-key': json.dumps([{}, '', ['work']]),
        'dict-key': json.dumps([{}, 'tasks', {'a': 1}]),
        'short': json.dumps([{}, 'tasks']),
        'not-a-list': json.dumps({'a': 1}),
        'binary': b'\xff\xfe',
        'backtrack': json.dumps([{}, 'topic', '.' * 3000 + 'y']),
        'good': good,
    })
    result = ansible.module('celery_queue_info', dict(broker_url=redis_env.url, queues=['work', 'deep']),
                            timeout=120)
    assert not result.get('failed'), result
    assert [(q['name'], q['unacked']) for q in result['queues']] == [('work', 1), ('deep', 0)]
