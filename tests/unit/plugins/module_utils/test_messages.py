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
    assert decode_envelope(raw) == dict(dict.fromkeys(HEADER_FIELDS + ('protocol', 'priority', 'content_type')),
                                        task=None, error=msg)
    assert isinstance(info.value, ValueError)


def test_envelope_with_odd_headers_and_properties():
    message = decode_envelope({'body': '', 'headers': 'oops', 'properties': ['x']})
    assert message['task'] is None and message['error'] == 'not a kombu message: "headers" is not a dict (str)'
    message = decode_envelope({'body': '', 'headers': {'task': 't'}, 'properties': ['x']})
    assert message['task'] is None and message['error'] == 'not a kombu message: "properties" is not a dict (list)'
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
def test_task_name_of_not_an_envelope_is_undecodable(raw):
    assert task_name_of(raw) is None  # UNDECODABLE


def test_task_name_of_compact_json():
    envelope = {'body': '', 'headers': {'task': 'compact.task'}, 'properties': {}}
    assert task_name_of(json.dumps(envelope, separators=(',', ':')).encode()) == 'compact.task'


@pytest.mark.parametrize('raw', [
    b'{"headers": {"task": "bad\\q escape"}, "body": ""',  # not JSON at all, with an invalid escape
    b'xx "task": "cut \\u12"',
])
def test_task_name_of_invalid_escape_is_undecodable(raw):
    assert task_name_of(raw) is None  # UNDECODABLE: not JSON


def test_task_name_of_empty_name_is_unknown():
    raw = json.dumps({'body': '', 'headers': {'task': ''}, 'properties': {}}).encode()
    assert task_name_of(raw) == UNKNOWN_TASK
    assert decode_envelope(raw)['task'] == UNKNOWN_TASK


def test_task_name_of_non_utf8_name_does_not_raise():
    raw = b'{"body": "", "headers": {"task": "caf\xe9"}}'
    assert task_name_of(raw) == 'caf\ufffd'


# -- hostile input: nothing makes a decoder raise anything but NotAnEnvelope ----------------------

import datetime  # noqa: E402
import decimal  # noqa: E402
import random  # noqa: E402

from ansible_collections.celeryops.fleet.plugins.module_utils._messages import (  # noqa: E402
    UNDECODABLE, count_task_names, json_body, loads)

DEEP = '[' * 200000
# Values of every type a JSON document or a pika header table can hold, good and bad.
ODD_VALUES = [None, True, 0, -1, 2 ** 70, 1.5, float('inf'), '', 'x', 'caf\u00e9', '\ud800', b'\xff', b'bytes',
              [], ['x'], {}, {'a': 'b'}, decimal.Decimal('1.5'), datetime.datetime(2026, 1, 2, 3, 4, 5),
              datetime.date(2026, 1, 2), [[[]]], {'task': ['x']}]


def junk(rng, depth=0):
    """A random JSON-able value: the shapes a hostile producer can write."""
    roll = rng.random()
    if depth > 3 or roll < 0.4:
        return rng.choice([None, True, 7, -2 ** 40, 3.25, '', 'task', '"', '\\', '\u00e9', '[' * 50, '1' * 30])
    if roll < 0.7:
        return [junk(rng, depth + 1) for _unused in range(rng.randrange(3))]
    keys = ['task', 'id', 'eta', 'retries', 'headers', 'body', 'properties', 'content-type', 'priority', 'x']
    return dict((rng.choice(keys), junk(rng, depth + 1)) for _unused in range(rng.randrange(4)))


def hostile_elements():
    """Raw Redis list elements a broker can hold: the reported poisons, then generated junk."""
    rng = random.Random(13)
    fixed = [
        DEEP, DEEP.encode(), '{"a":' * 100000, '{"headers": {"task": ' + '[' * 100000 + '}}',
        json.dumps({'headers': {'task': ['x']}, 'body': ''}), json.dumps({'headers': {'task': {'a': 1}}, 'body': ''}),
        json.dumps({'headers': {'task': 5}, 'body': ''}), json.dumps({'headers': {'task': None}, 'body': ''}),
        json.dumps({'headers': ['task', 'x'], 'body': ''}), json.dumps({'headers': 'x', 'body': ''}),
        json.dumps({'headers': {}, 'properties': ['x'], 'body': ''}),
        json.dumps({'headers': {'task': 't', 'id': ['x'], 'eta': {'a': 1}, 'retries': 'many', 'argsrepr': [1],
                                'origin': 5}, 'properties': {'priority': 'high'}, 'content-type': ['x'], 'body': ''}),
        '{"headers": {"task": "t"}, "body": ' + '1' * 5000 + '}', '{"headers": {"task": "\\ud800"}, "body": ""}',
        '{"headers": {"task": "t", "id": "\\udfff"}, "body": ""}', '{"headers": {}, "body": 1e999}',
        json.dumps({'headers': {}, 'content-type': 'application/json', 'body': DEEP}),
        json.dumps({'headers': {}, 'content-type': 'application/json', 'body': json.dumps({'task': ['x']})}),
        json.dumps({'headers': {}, 'content-type': 'application/json',
                    'body': json.dumps({'task': 't', 'args': [[[[]]]], 'kwargs': {'a': [1]}, 'retries': 'x'})}),
        json.dumps({'headers': {}, 'content-type': 'application/json', 'properties': {'body_encoding': 'base64'},
                    'body': base64.b64encode(DEEP.encode()).decode()}),
        json.dumps({'headers': {}, 'content-type': 'application/json', 'properties': 'x', 'body': '{}'}),
        b'\xff' * 10, b'', b'"task": "x"', b'{"task": "',
    ]
    generated = []
    for _unused in range(400):
        value = junk(rng)
        generated.append(json.dumps(value).encode() if rng.random() < 0.8 else value)
        generated.append(json.dumps({'headers': junk(rng), 'body': junk(rng), 'properties': junk(rng),
                                     'content-type': rng.choice(['application/json', None, 5])}).encode())
    return fixed + generated


def json_safe(value):
    """What Ansible can return: JSON text that encodes to UTF-8."""
    json.dumps(value, allow_nan=True).encode('utf-8')
    json.dumps(value, ensure_ascii=False).encode('utf-8')
    return True


def test_every_hostile_element_decodes_or_is_undecodable():
    for raw in hostile_elements():
        try:
            load_envelope(raw)
        except NotAnEnvelope:
            pass
        message = decode_envelope(raw)
        assert json_safe(message), raw
        assert message['task'] is UNDECODABLE or (isinstance(message['task'], str) and message['task']), raw
        assert (message['task'] is UNDECODABLE) == ('error' in message), raw
        name = task_name_of(raw)
        assert name is UNDECODABLE or isinstance(name, str), raw


def test_count_task_names_never_raises_and_counts_every_element():
    elements = [raw if isinstance(raw, bytes) else raw.encode('utf-8', 'surrogatepass') if isinstance(raw, str)
                else raw for raw in hostile_elements()]
    counts = count_task_names(elements)
    assert sum(counts.values()) == len(elements)
    assert all(name is UNDECODABLE or isinstance(name, str) for name in counts)
    assert counts[UNDECODABLE] > 0


@pytest.mark.parametrize('raw, why', [
    (DEEP, 'nested deeper than'),
    (json.dumps({'headers': {'task': ['x']}, 'body': ''}), 'the task name is not a string (list)'),
    (json.dumps({'headers': {'task': 5}, 'body': ''}), 'the task name is not a string (int)'),
    (json.dumps({'headers': ['x'], 'body': ''}), '"headers" is not a dict (list)'),
    (json.dumps({'headers': {}, 'properties': 'x', 'body': ''}), '"properties" is not a dict (str)'),
    ('not json at all', 'not JSON'),
])
def test_the_reported_poisons_are_undecodable(raw, why):
    message = decode_envelope(raw)
    assert message['task'] is UNDECODABLE and why in message['error']
    assert task_name_of(raw) is UNDECODABLE
    assert task_name_of(raw.encode()) is UNDECODABLE
    assert count_task_names([raw.encode(), b'{"headers": {"task": "ok"}, "body": ""}']) == {UNDECODABLE: 1, 'ok': 1}


def test_a_decodable_message_without_a_task_is_unknown_not_undecodable():
    for raw in (json.dumps({'headers': {'task': ''}, 'body': ''}), json.dumps({'headers': {}, 'body': ''}),
                json.dumps({'headers': None, 'body': None})):
        assert decode_envelope(raw)['task'] == UNKNOWN_TASK and 'error' not in decode_envelope(raw)
        assert task_name_of(raw.encode()) == UNKNOWN_TASK


def test_loads_refuses_deep_nesting_and_huge_numbers_with_not_an_envelope():
    for text in (DEEP, DEEP.encode(), '{"a":' * 100000, '[' * 65 + ']' * 65, '1' * 5000, b'\xff', 'nope'):
        with pytest.raises(NotAnEnvelope):
            loads(text)
    assert loads('[' * 30 + ']' * 30) is not None
    assert loads('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')['a'].startswith('[')


@pytest.mark.parametrize('field', [f for f in HEADER_FIELDS if f != 'task'])
@pytest.mark.parametrize('value', ODD_VALUES)
def test_describe_message_takes_any_header_value(field, value):
    """AMQP header tables (pika) hold bytes, lists, dicts, Decimals and datetimes."""
    message = describe_message({'task': 'proj.t', field: value}, {'priority': value, 'content_type': value})
    assert message['task'] == 'proj.t' and json_safe(message)
    if field == 'retries':
        assert message['retries'] is None or isinstance(message['retries'], int)
    else:
        assert message[field] is None or isinstance(message[field], str)
    assert message['priority'] is None or isinstance(message['priority'], int)


@pytest.mark.parametrize('value', [v for v in ODD_VALUES if not (isinstance(v, str) and v) and v is not None])
def test_describe_message_task_must_be_a_non_empty_string(value):
    message = describe_message({'task': value})
    if value in ('', b'') or value == [] or value == {}:
        assert message['task'] in (UNKNOWN_TASK, UNDECODABLE)
    else:
        assert message['task'] is UNDECODABLE and 'error' in message
    assert json_safe(message)


def test_describe_message_of_non_dict_headers_is_undecodable():
    for headers in (['task'], 'task', 5):
        message = describe_message(headers, {})
        assert message['task'] is UNDECODABLE and 'error' in message


def test_json_body_never_raises():
    for body in (DEEP, '{"a":' * 10000, '1' * 5000, b'\xff', 5, None, ['x']):
        for properties in ({}, {'body_encoding': 'base64'}, 'x', ['x'], None):
            envelope = {'content-type': 'application/json', 'body': body, 'properties': properties}
            assert json_body(envelope, (dict, list)) is None or json_safe(json_body(envelope, (dict, list)))
