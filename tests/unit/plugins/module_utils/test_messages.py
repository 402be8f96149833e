# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decoding kombu envelopes from headers only. Real envelopes come from Celery publishing to
kombu's in-memory transport, which builds the same dict the Redis transport LPUSHes as JSON
(``kombu.utils.json.dumps(message)``, see ``kombu/transport/redis.py``)."""

import base64
import json
import pickle

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._messages import (
    HEADER_FIELDS, NotAnEnvelope, UNKNOWN_TASK, decode_envelope, describe_message, load_envelope, task_name_of)

celery = pytest.importorskip('celery')
kombu_json = pytest.importorskip('kombu.utils.json')


def publish(protocol=2, name='proj.tasks.add', args=(2, 3), kwargs=None, **options):
    """Publish one task with Celery and return the element the Redis transport would store (bytes)."""
    app = celery.Celery('fleet_unit', broker='memory://', set_as_current=False)
    app.conf.task_protocol = protocol
    app.conf.task_default_queue = 'unit'
    try:
        with app.connection_for_write() as conn:
            app.send_task(name, args=args, kwargs=kwargs or {}, connection=conn, queue='unit', **options)
            message = conn.default_channel._get('unit')
    finally:
        app.close()
    return kombu_json.dumps(message).encode('utf-8')


@pytest.fixture(scope='module')
def v2():
    return publish(2, args=(2, 3), kwargs={'z': 1}, priority=5, countdown=60, expires=3600, task_id='id-v2',
                   retries=2)


@pytest.fixture(scope='module')
def v1():
    return publish(1, args=(2, 3), kwargs={'z': 1}, priority=6, task_id='id-v1')


# -- protocol 2 ---------------------------------------------------------------------------------

def test_protocol_2(v2):
    envelope = json.loads(v2)
    assert envelope['properties']['body_encoding'] == 'base64'  # the real layout, not a hand-made one
    message = decode_envelope(v2)
    assert message['protocol'] == 2
    assert message['task'] == 'proj.tasks.add'
    assert message['id'] == 'id-v2'
    assert message['argsrepr'] == '(2, 3)'
    assert message['kwargsrepr'] == "{'z': 1}"
    assert message['retries'] == 2
    assert message['priority'] == 5
    assert message['eta'] is not None and message['eta'] == envelope['headers']['eta']
    assert message['expires'] is not None
    assert message['root_id'] == 'id-v2'
    assert message['parent_id'] is None
    assert message['content_type'] == 'application/json'
    assert set(message) == set(HEADER_FIELDS) | {'protocol', 'priority', 'content_type'}


def test_protocol_2_from_str_and_dict(v2):
    assert decode_envelope(v2.decode('utf-8')) == decode_envelope(v2)
    assert decode_envelope(json.loads(v2)) == decode_envelope(v2)
    assert decode_envelope(bytearray(v2)) == decode_envelope(v2)


def test_protocol_2_pickle_is_read_from_headers_only(monkeypatch):
    raw = publish(2, serializer='pickle', task_id='id-p2')
    monkeypatch.setattr(pickle, 'loads', _no_unpickling)
    monkeypatch.setattr(pickle, 'Unpickler', _no_unpickling)
    message = decode_envelope(raw)
    assert message['task'] == 'proj.tasks.add'
    assert message['id'] == 'id-p2'
    assert message['content_type'] == 'application/x-python-serialize'
    assert message['protocol'] == 2
    assert task_name_of(raw) == 'proj.tasks.add'


# -- protocol 1 ---------------------------------------------------------------------------------

def test_protocol_1_json(v1):
    envelope = json.loads(v1)
    assert envelope['headers'] == {}  # protocol 1: the task is in the body
    assert envelope['content-type'] == 'application/json'
    message = decode_envelope(v1)
    assert message['protocol'] == 1
    assert message['task'] == 'proj.tasks.add'
    assert message['id'] == 'id-v1'
    assert message['argsrepr'] == '[2, 3]'
    assert message['kwargsrepr'] == '{"z": 1}'
    assert message['retries'] == 0
    assert message['priority'] == 6
    assert task_name_of(v1) == 'proj.tasks.add'


def test_protocol_1_json_body_not_base64():
    body = dict(task='proj.tasks.mail', id='i1', args=[], kwargs={}, retries=1, eta=None, expires=None)
    envelope = {'body': json.dumps(body), 'content-type': 'application/json', 'content-encoding': 'utf-8',
                'headers': {}, 'properties': {'priority': 0}}
    message = decode_envelope(json.dumps(envelope))
    assert (message['protocol'], message['task'], message['id'], message['retries']) == (1, 'proj.tasks.mail', 'i1', 1)
    assert message['argsrepr'] == '[]'


def test_protocol_1_long_args_are_cut():
    body = dict(task='t', id='i', args=['x' * 5000], kwargs={})
    envelope = {'body': base64.b64encode(json.dumps(body).encode()).decode(), 'content-type': 'application/json',
                'headers': {}, 'properties': {'body_encoding': 'base64'}}
    assert len(decode_envelope(envelope)['argsrepr']) == 1024


@pytest.mark.parametrize('body', ['not base64 !!!', base64.b64encode(b'\xff\xfe').decode(),
                                  base64.b64encode(b'not json').decode(), base64.b64encode(b'[1, 2]').decode(),
                                  base64.b64encode(b'{"id": "no task"}').decode()])
def test_protocol_1_unreadable_body_is_unknown(body):
    envelope = {'body': body, 'content-type': 'application/json', 'headers': {},
                'properties': {'body_encoding': 'base64'}}
    message = decode_envelope(envelope)
    assert message['task'] == UNKNOWN_TASK
    assert message['protocol'] == 2


UNPICKLED = []


def _record(what):
    UNPICKLED.append(what)


class _Boom(object):
    """Unpickling this runs code (here: harmless): the decoder must never do it."""

    def __reduce__(self):
        return (_record, ('unpickled!',))


def _no_unpickling(*args, **kwargs):
    raise AssertionError('a message body was unpickled')


def test_protocol_1_pickle_is_never_unpickled(monkeypatch):
    raw = publish(1, serializer='pickle', task_id='id-p1')
    envelope = json.loads(raw)
    assert envelope['content-type'] == 'application/x-python-serialize'
    assert envelope['headers'] == {}
    monkeypatch.setattr(pickle, 'loads', _no_unpickling)
    monkeypatch.setattr(pickle, 'Unpickler', _no_unpickling)
    message = decode_envelope(raw)
    assert message['task'] == UNKNOWN_TASK
    assert message['id'] is None
    assert message['content_type'] == 'application/x-python-serialize'
    assert task_name_of(raw) == UNKNOWN_TASK


def test_malicious_pickle_body_does_not_run():
    payload = pickle.dumps(_Boom())
    pickle.loads(payload)
    assert UNPICKLED == ['unpickled!']  # the payload works...
    del UNPICKLED[:]
    envelope = {'body': base64.b64encode(payload).decode(), 'content-type': 'application/x-python-serialize',
                'content-encoding': 'binary', 'headers': {},
                'properties': {'body_encoding': 'base64', 'priority': 0}}
    raw = json.dumps(envelope).encode()
    assert decode_envelope(raw)['task'] == UNKNOWN_TASK
    assert task_name_of(raw) == UNKNOWN_TASK
    # ... and a pickle body under a JSON content-type is not JSON, so it is not read either.
    envelope['content-type'] = 'application/json'
    assert decode_envelope(envelope)['task'] == UNKNOWN_TASK
    assert UNPICKLED == []  # ...but the decoder never ran it


def test_pickle_with_task_in_headers():
    envelope = {'body': base64.b64encode(pickle.dumps(_Boom())).decode(),
                'content-type': 'application/x-python-serialize', 'headers': {'task': 'proj.tasks.x', 'id': 'i'},
                'properties': {'body_encoding': 'base64'}}
    assert decode_envelope(envelope)['task'] == 'proj.tasks.x'
    assert UNPICKLED == []


# -- not envelopes ------------------------------------------------------------------------------

@pytest.mark.parametrize('raw, msg', [
    (b'\xff\xfe\x00', 'not a kombu message: 3 bytes that are not UTF-8 text'),
    (b'hello', 'not a kombu message: not JSON (hello)'),
    ('', 'not a kombu message: not JSON ()'),
    ('{"body": ', 'not a kombu message: not JSON ({"body": )'),
    ('x' * 100, 'not a kombu message: not JSON (%s...)' % ('x' * 60)),
    (b'[1, 2]', 'not a kombu message: a JSON list without "headers" or "body" ([1, 2])'),
    (b'"text"', 'not a kombu message: a JSON str without "headers" or "body" ("text")'),
    (b'42', 'not a kombu message: a JSON int without "headers" or "body" (42)'),
    (b'null', 'not a kombu message: a JSON NoneType without "headers" or "body" (null)'),
    (b'{"a": 1}', 'not a kombu message: a JSON dict without "headers" or "body" ({"a": 1})'),
    ({'a': 1}, "not a kombu message: a JSON dict without \"headers\" or \"body\" ({'a': 1})"),
    (42, 'not a kombu message: expected a JSON string, got int'),
    (None, 'not a kombu message: expected a JSON string, got NoneType'),
    ([b'x'], 'not a kombu message: expected a JSON string, got list'),
])
def test_not_an_envelope(raw, msg):
    with pytest.raises(NotAnEnvelope) as info:
        load_envelope(raw)
    assert str(info.value) == msg
    with pytest.raises(NotAnEnvelope):
        decode_envelope(raw)
    assert isinstance(info.value, ValueError)


def test_envelope_with_odd_headers_and_properties():
    message = decode_envelope({'body': '', 'headers': 'oops', 'properties': ['x']})
    assert message['task'] == UNKNOWN_TASK
    assert message['priority'] is None
    assert decode_envelope({'headers': None, 'body': None})['task'] == UNKNOWN_TASK


def test_headers_only_envelope():
    message = decode_envelope({'headers': {'task': 't', 'id': 'i', 'retries': 3}})
    assert (message['task'], message['id'], message['retries'], message['content_type']) == ('t', 'i', 3, None)


# -- describe_message (AMQP side) ---------------------------------------------------------------

def test_describe_message_from_amqp_properties():
    message = describe_message({'task': 'proj.tasks.add', 'id': 'i', 'argsrepr': '(1,)'},
                               {'priority': 9, 'content_type': 'application/json'})
    assert (message['task'], message['id'], message['argsrepr'], message['priority']) == (
        'proj.tasks.add', 'i', '(1,)', 9)
    assert message['content_type'] == 'application/json'
    assert message['protocol'] == 2


def test_describe_message_nothing():
    message = describe_message(None, None)
    assert message['task'] == UNKNOWN_TASK
    assert all(message[field] is None for field in HEADER_FIELDS if field != 'task')
    assert message['priority'] is None and message['content_type'] is None


def test_describe_message_empty_task_is_unknown():
    assert describe_message({'task': ''})['task'] == UNKNOWN_TASK


# -- task_name_of -------------------------------------------------------------------------------

def test_task_name_of_fast_path_matches_full_decode(v2, v1):
    for raw in (v2, v1, publish(2, name='a.b'), publish(2, serializer='pickle'), publish(1, name='c.d')):
        assert task_name_of(raw) == decode_envelope(raw)['task']


@pytest.mark.parametrize('name', [
    'proj.tasks."quoted"',
    'proj\\tasks\\back',
    'proj.tâches.envoyer',     # kombu's JSON escapes non-ASCII: \u00e2
    'proj.tasks.\U0001F600',     # a surrogate pair once escaped
    'tab\there',
])
def test_task_name_of_escaped_names(name):
    raw = publish(2, name=name)
    assert b'\\' in raw.split(b'"task": ', 1)[1].split(b', "id"', 1)[0]  # it really is escaped on the wire
    assert task_name_of(raw) == name
    assert decode_envelope(raw)['task'] == name


def test_task_name_of_not_fooled_by_args():
    # Sorted keys put argsrepr before task in the headers; a quoted '"task": "evil"' inside
    # a JSON string is escaped, so the fast path must not pick it.
    raw = publish(2, name='real.task', args=('"task": "evil"',))
    envelope = json.loads(raw)
    raw = json.dumps(envelope, sort_keys=True).encode()
    assert raw.index(b'argsrepr') < raw.index(b'"task": "real.task"')
    assert task_name_of(raw) == 'real.task'


def test_task_name_of_falls_back_for_str_and_dict(v2):
    assert task_name_of(v2.decode('utf-8')) == 'proj.tasks.add'
    assert task_name_of(json.loads(v2)) == 'proj.tasks.add'


@pytest.mark.parametrize('raw', [b'', b'garbage', b'\xff\xfe', b'[1]', b'{"a": 1}', 'plain text', None, 42])
def test_task_name_of_unknown(raw):
    assert task_name_of(raw) == UNKNOWN_TASK


def test_task_name_of_compact_json():
    envelope = {'body': '', 'headers': {'task': 'compact.task'}, 'properties': {}}
    assert task_name_of(json.dumps(envelope, separators=(',', ':')).encode()) == 'compact.task'


@pytest.mark.parametrize('raw', [
    b'{"headers": {"task": "bad\\q escape"}, "body": ""',  # not JSON at all, with an invalid escape
    b'xx "task": "cut \\u12"',
])
def test_task_name_of_invalid_escape_is_unknown(raw):
    assert task_name_of(raw) == UNKNOWN_TASK


def test_task_name_of_empty_name_is_unknown():
    raw = json.dumps({'body': '', 'headers': {'task': ''}, 'properties': {}}).encode()
    assert task_name_of(raw) == UNKNOWN_TASK
    assert decode_envelope(raw)['task'] == UNKNOWN_TASK


def test_task_name_of_non_utf8_name_does_not_raise():
    raw = b'{"body": "", "headers": {"task": "caf\xe9"}}'
    assert task_name_of(raw) == 'caf\ufffd'
