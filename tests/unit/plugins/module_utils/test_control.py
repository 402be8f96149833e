"""The pidbox messages _control.py writes and reads on Redis (pure logic; the protocol itself is
tested against real workers in tests/integration/test_worker_info.py and test_worker.py)."""

import base64
import json

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils import _control
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import make_envelope


def test_a_request_is_what_kombus_mailbox_publishes():
    body = _control._request('ping', None, ['w1@h'], ticket='t-1', reply_to='oid-1')
    assert body == {'method': 'ping', 'arguments': {}, 'destination': ['w1@h'], 'pattern': None, 'matcher': None,
                    'ticket': 't-1', 'reply_to': {'exchange': 'reply.celery.pidbox', 'routing_key': 'oid-1'}}
    assert 'ticket' not in _control._request('shutdown', None, None)


def test_envelope_is_kombus_redis_format():
    envelope = json.loads(make_envelope({'a': 1}, {'clock': 1}, 'celery.pidbox'))
    assert envelope['content-type'] == 'application/json' and envelope['content-encoding'] == 'utf-8'
    assert envelope['properties']['body_encoding'] == 'base64'
    assert envelope['properties']['delivery_info'] == {'exchange': 'celery.pidbox', 'routing_key': ''}
    assert json.loads(base64.b64decode(envelope['body'])) == {'a': 1}


def test_a_reply_gives_its_ticket_and_body():
    raw = make_envelope({'w1@h': {'ok': 'pong'}}, {'ticket': 't-1', 'clock': 3}, 'reply.celery.pidbox', 'oid')
    assert _control._reply_of(raw.encode('utf-8')) == ('t-1', {'w1@h': {'ok': 'pong'}})


def test_anything_else_on_the_reply_list_is_ignored():
    no_ticket = make_envelope({'w1@h': {}}, {}, 'reply.celery.pidbox')
    pickled = json.dumps({'body': 'gASVAAAA', 'content-type': 'application/x-python-serialize', 'headers': {'ticket': 't'},
                          'properties': {'body_encoding': 'base64'}})
    for raw in (b'not json', b'[1, 2]', no_ticket.encode(), pickled.encode()):
        assert _control._reply_of(raw) is None


def test_expectation_names_patterns_and_count():
    expectation = _control.Expectation(['a@h', 'b@*'], count=2)
    assert not expectation.met_by({'a@h'})
    assert expectation.met_by({'a@h', 'b@web'})
    assert not _control.Expectation(['a@h', 'b@*']).met_by({'a@h', 'b@web'})  # a pattern may match more
    assert expectation.unexpected({'a@h', 'b@web', 'c@h'}) == ['c@h']
    assert expectation.missing({'b@x'}) == ['a@h']
    assert _control.Expectation(count=2).met_by({'x@1', 'y@2'})
    assert not _control.Expectation(['*@h']).met_by({'a@h'})  # patterns alone: more may match


def test_replies_keep_duplicates_apart():
    replies = _control.Replies(['ping'])
    replies.add('ping', 'twin@h', {'ok': 'pong'})
    replies.add('ping', 'twin@h', {'ok': 'pong'})
    replies.add('ping', 'one@h', {'ok': 'pong'})
    assert replies.duplicates() == ['twin@h'] and replies.nodes() == {'twin@h', 'one@h'}


# -- hostile replies: counted as undecodable and skipped, never a traceback -----------------------

import random  # noqa: E402

DEEP = '[' * 200000


def hostile_values(seed=7, count=300):
    """JSON-able junk of every shape, nested a little, and a few that cannot be parsed at all."""
    rng = random.Random(seed)

    def junk(depth=0):
        roll = rng.random()
        if depth > 3 or roll < 0.4:
            return rng.choice([None, True, 0, 2 ** 70, 1.5, '', 'x', '\u00e9', DEEP[:70]])
        if roll < 0.7:
            return [junk(depth + 1) for _unused in range(rng.randrange(3))]
        keys = ['ok', 'error', 'pool', 'processes', 'max-concurrency', 'autoscaler', 'name', 'id', 'w1@h']
        return dict((rng.choice(keys), junk(depth + 1)) for _unused in range(rng.randrange(4)))
    return [junk() for _unused in range(count)]


def reply_element(body, headers):
    """A reply as a worker LPUSHes it, with any body and headers."""
    envelope = json.loads(make_envelope({}, {}, 'reply.celery.pidbox'))
    envelope['headers'] = headers
    envelope['body'] = base64.b64encode(body if isinstance(body, bytes) else json.dumps(body).encode()).decode()
    return json.dumps(envelope).encode()


def test_a_hostile_reply_element_is_none_or_a_ticket_and_a_dict():
    elements = [DEEP.encode(), b'{"a":' * 100000, b'\xff', reply_element(DEEP.encode(), {'ticket': 't'}),
                reply_element({'w@h': {'ok': 'pong'}}, {'ticket': ['t']}), reply_element(['x'], {'ticket': 't'}),
                reply_element({'w@h': 1}, ['ticket']), reply_element({'w@h': 1}, {'ticket': {'a': 1}})]
    elements += [reply_element(value, {'ticket': ticket}) for value in hostile_values()
                 for ticket in ('t', None, 5)]
    for raw in elements:
        reply = _control._reply_of(raw)
        assert reply is None or (isinstance(reply[0], str) and isinstance(reply[1], dict)), raw
    assert _control._reply_of(reply_element({'w@h': {'ok': 'pong'}}, {'ticket': ['t']})) is None
    assert _control._reply_of(reply_element(DEEP.encode(), {'ticket': 't'})) is None


REAL_REPLIES = {
    'ping': {'ok': 'pong'},
    'stats': {'pid': 42, 'pool': {'max-concurrency': 2, 'processes': [43, 44], 'timeouts': [0, 0]},
              'broker': {'hostname': 'h'}, 'prefetch_count': 8, 'total': {}},
    'active': [{'id': 'i', 'name': 'proj.add', 'args': [1, 2]}],
    'reserved': [], 'scheduled': [{'eta': 'x', 'request': {}}],
    'active_queues': [{'name': 'default', 'routing_key': 'default'}],
    'registered': ['proj.add'], 'revoked': ['i'], 'conf': {'broker_url': 'x'}, 'memdump': '- rss: 1 MB',
    'add_consumer': {'ok': 'add consumer default'}, 'pool_grow': {'error': 'not supported'},
}


def test_celerys_own_replies_are_readable():
    for command, value in REAL_REPLIES.items():
        assert _control.readable_reply(command, value), command


@pytest.mark.parametrize('command, value', [
    ('ping', 'pong'), ('ping', {'ok': ['pong']}), ('stats', 'a string'), ('stats', {'pool': []}),
    ('stats', {'pool': {'processes': 3}}), ('stats', {'pool': {'max-concurrency': '2'}}),
    ('stats', {'autoscaler': [1, 2]}), ('active', {'id': 'i'}), ('active', ['i']), ('active_queues', [{'name': 5}]),
    ('active_queues', [{'routing_key': 'x'}]), ('active_queues', ['default']), ('registered', [['x']]),
    ('conf', []), ('memdump', 5), ('add_consumer', {'ok': {'a': 1}}), ('cancel_consumer', None),
])
def test_replies_of_another_shape_are_not_readable(command, value):
    assert not _control.readable_reply(command, value)


class _FakeMailbox(object):
    """Hands Control.request the given replies, with whatever ticket the request sent (pure logic)."""

    def __init__(self, replies):
        self.replies_to_give = replies
        self.tickets = {}

    def publish(self, bodies, expires, reply):
        self.tickets = dict((body['method'], body['ticket']) for body in bodies('oid'))

    def replies(self, wait):
        out = [(self.tickets.get(r[0], r[0]), r[1]) if r else r for r in self.replies_to_give]
        self.replies_to_give = []
        return out

    def check(self, timeout, complete):
        pass

    def close(self):
        pass


def test_request_counts_and_skips_what_cannot_be_read():
    control = _control.Control.__new__(_control.Control)
    control.undecodable = 0
    control.mailbox = _FakeMailbox([
        None, None,                                                        # not JSON, not a kombu message
        ('ping', {'good@h': {'ok': 'pong'}, 'rogue@h': ['pong']}),          # one node's value of another shape
        ('stats', {'good@h': REAL_REPLIES['stats'], 'rogue@h': 'stats!'}),
        ('active_queues', {'good@h': REAL_REPLIES['active_queues'], 'rogue@h': [{'name': ['q']}]}),
        ('an-old-ticket', {'late@h': {'ok': 'pong'}}),                      # a late reply: not junk, not ours now
    ] + [('ping', {'fuzz@h': value}) for value in hostile_values(count=50)])
    replies = control.request({'ping': {}, 'stats': {}, 'active_queues': {}},
                              _control.Expectation(['good@h']), timeout=0.2)
    assert replies.nodes('stats') == {'good@h'} and replies.nodes('active_queues') == {'good@h'}
    assert 'rogue@h' not in replies.nodes('ping') and 'late@h' not in replies.nodes('ping')
    fuzz = sum(1 for value in hostile_values(count=50) if not _control.readable_reply('ping', value))
    assert replies.undecodable == 2 + 3 + fuzz == control.undecodable
    assert all(_control.readable_reply('ping', v) for v in replies.by_command['ping'].get('fuzz@h', []))
