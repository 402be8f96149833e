"""The pidbox messages _control.py writes and reads on Redis (pure logic; the protocol itself is
tested against real workers in tests/integration/test_worker_info.py and test_worker.py)."""

import base64
import json

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
