# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure logic of celery_task_info and celery_task: selection, argument decoding, pools, signals."""

import base64
import json
import pickle

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import OptionError
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import make_envelope, task_arguments
from ansible_collections.celeryops.fleet.plugins.module_utils._tasks import (
    Selector, check_selectors, check_signal, message_describer, pool_of, redis_view, worker_view)


def params(**given):
    out = dict(ids=None, task_names=None, args_contains=None, kwargs_contains=None, older_than=None, queues=None,
               expected_nodes=None, expected_count=None, timeout=1.0)
    out.update(given)
    return out


def view(**fields):
    out = dict(id='a', task='proj.add', args=[1, 'x', {'k': [1, 2]}], kwargs={'to': 'ops', 'n': 1}, runtime=None)
    out.update(fields)
    return out


@pytest.mark.parametrize('given, expected', [
    (dict(ids=['a']), True),
    (dict(ids=['b']), False),
    (dict(task_names=['proj.add']), True),
    (dict(task_names=['proj.add'], ids=['b']), False),   # every selector must hold
    (dict(args_contains=['x', 1]), True),                # a subset, any order
    (dict(args_contains=[{'k': [1, 2]}]), True),
    (dict(args_contains=[2]), False),
    (dict(args_contains=[True]), False),                 # True is not 1
    (dict(args_contains=[1.0]), True),                   # 1.0 is 1
    (dict(kwargs_contains={'to': 'ops'}), True),
    (dict(kwargs_contains={'to': 'dev'}), False),
    (dict(kwargs_contains={'missing': None}), False),
    (dict(older_than=5), False),                         # not active: no runtime
])
def test_selector(given, expected):
    assert Selector(params(**given)).matches(view()) is expected


def test_older_than_selects_active_tasks_running_that_long():
    selector = Selector(params(older_than=5))
    assert selector.matches(view(runtime=5.0)) and selector.matches(view(runtime=9))
    assert not selector.matches(view(runtime=4.9))


def test_arguments_that_cannot_be_read_never_match():
    selector = Selector(params(args_contains=[1]))
    assert not selector.matches(view(args=None)) and not selector.matches(view(args='(1,)'))


def test_stamps():
    selector = Selector(params(), {'mystamp': ['s1', 's2']})
    assert selector.matches(view(stamps={'mystamp': 's2'}))
    assert selector.matches(view(stamps={'mystamp': ['s9', 's1']}))
    assert not selector.matches(view(stamps={'mystamp': 's3'}))
    assert not selector.matches(view())   # a worker's view has no stamps


def test_task_arguments_protocol_2_json_body():
    envelope = json.loads(make_envelope([[1, 2], {'z': 3}, {}], {'task': 't', 'id': 'i'}, ''))
    assert task_arguments(envelope['headers'], envelope) == ([1, 2], {'z': 3})


def test_task_arguments_protocol_1_json_body():
    envelope = json.loads(make_envelope({'task': 't', 'id': 'i', 'args': [4], 'kwargs': {}}, {}, ''))
    assert task_arguments(envelope['headers'], envelope) == ([4], {})


def test_task_arguments_from_reprs_without_unpickling(tmp_path):
    marker = tmp_path / 'x'

    class Boom(object):
        def __reduce__(self):
            import os
            return (os.system, ('touch %s' % marker,))
    envelope = {'content-type': 'application/x-python-serialize', 'body': base64.b64encode(pickle.dumps(Boom())).decode(),
                'properties': {'body_encoding': 'base64'}}
    headers = {'argsrepr': "(1, 'a')", 'kwargsrepr': "{'b': (2, 3)}"}
    args, kwargs = task_arguments(headers, envelope)
    assert args == [1, 'a'] and kwargs == {'b': (2, 3)}
    assert Selector(params(kwargs_contains={'b': [2, 3]})).matches(view(args=args, kwargs=kwargs))
    assert not marker.exists()


@pytest.mark.parametrize('argsrepr', ["__import__('os').system('true')", '(' * 10000, 'x' * 100000, "[1, 2", '',
                                      None, 42, '<object object at 0x7f>'])
def test_reprs_that_are_not_literals_give_nothing(argsrepr):
    assert task_arguments({'argsrepr': argsrepr, 'kwargsrepr': argsrepr}) == (None, None)


def test_redis_view_of_junk_never_raises():
    describe = message_describer(Selector(params(args_contains=[1])))
    for raw in (b'\xff', b'[' * 100000, b'{}', b'{"headers": 5}', b'{"headers": {"task": 5}}'):
        assert redis_view(raw, describe)['task'] is None or redis_view(raw, describe)['task'] == '<unknown>'


def test_worker_view_runtime_and_hostile_fields():
    now = 2000000000.0
    assert worker_view({'id': 'a', 'name': 'n', 'time_start': now - 12.5, 'worker_pid': 7, 'args': [1]}, now,
                       active=True)['runtime'] == 12.5
    # A monotonic clock value (not a Unix time) is no runtime; junk types are dropped.
    odd = worker_view({'id': 5, 'name': ['n'], 'time_start': 1234.0, 'worker_pid': True, 'args': 'x(',
                       'delivery_info': 'no'}, now, active=True)
    assert (odd['id'], odd['task'], odd['runtime'], odd['worker_pid'], odd['args'], odd['queue']) == \
        (None, None, None, None, None, None)
    assert worker_view({'id': 'a', 'args': '(1, 2)', 'kwargs': '{}'}, now)['args'] == [1, 2]


@pytest.mark.parametrize('implementation, pool', [
    ('celery.concurrency.prefork:TaskPool', 'prefork'),
    ('celery.concurrency.thread:TaskPool', 'threads'),
    ('celery.concurrency.solo:TaskPool', 'solo'),
    ('celery.concurrency.gevent:TaskPool', 'gevent'),
    (5, None),
])
def test_pool_of(implementation, pool):
    assert pool_of({'pool': {'implementation': implementation}}) == pool
    assert pool_of('junk') is None and pool_of({'pool': []}) is None


@pytest.mark.parametrize('given, name', [('SIGTERM', 'SIGTERM'), ('term', 'SIGTERM'), ('KILL', 'SIGKILL'), ('9', 'SIGKILL')])
def test_signal(given, name):
    assert check_signal(given) == name


@pytest.mark.parametrize('given', ['SIGNOPE', '', '999', 'SIGSTOP', 'TERM; rm'])
def test_bad_signal(given):
    with pytest.raises(OptionError) as error:
        check_signal(given)
    assert error.value.option == 'signal'


@pytest.mark.parametrize('given, option', [
    (dict(ids=[]), 'ids'),
    (dict(task_names=[]), 'task_names'),
    (dict(args_contains=[]), 'args_contains'),
    (dict(kwargs_contains={}), 'kwargs_contains'),
    (dict(queues=[]), 'queues'),
    (dict(ids=[' ']), 'ids'),
    (dict(older_than=float('nan')), 'older_than'),
    (dict(older_than=-1.0), 'older_than'),
    (dict(expected_nodes=['nohost']), 'expected_nodes'),
    (dict(timeout=0.0), 'timeout'),
])
def test_check_selectors(given, option):
    with pytest.raises(OptionError) as error:
        check_selectors(params(**given))
    assert error.value.option == option


def test_a_selector_is_required_for_celery_task():
    with pytest.raises(OptionError) as error:
        check_selectors(params(queues=['q']), required=True)
    assert 'no task selected' in error.value.msg
    check_selectors(params(older_than=0.0), required=True)


def test_stamps_are_read_from_the_stamps_header():
    selector = Selector(params(), {'batch': 'b1'})
    describe = message_describer(selector)
    envelope = json.loads(make_envelope([[], {}, {}], {'task': 't', 'id': 'i', 'stamped_headers': ['batch'],
                                                       'stamps': {'batch': 'b1'}}, ''))
    assert selector.matches(redis_view(json.dumps(envelope), describe))
    envelope['headers']['stamps'] = {'batch': 'b2'}
    assert not selector.matches(redis_view(json.dumps(envelope), describe))
    envelope['headers']['stamps'] = 'junk'
    assert not selector.matches(redis_view(json.dumps(envelope), describe))


def raw_message(protocol, task_id, task='proj.add'):
    """A Redis list element as kombu writes it (bytes), of Celery's protocol 2 or 1."""
    if protocol == 2:
        return make_envelope([[1], {}, {}], {'id': task_id, 'task': task, 'argsrepr': '(1,)'}, 'celery').encode()
    return make_envelope({'id': task_id, 'task': task, 'args': [1], 'kwargs': {}}, {}, 'celery').encode()


@pytest.mark.parametrize('selected, raw, may', [
    (dict(ids=['id-1']), raw_message(2, 'id-1'), True),
    (dict(ids=['id-1']), raw_message(2, 'id-2'), False),
    (dict(ids=['id-2', 'id-1']), raw_message(2, 'id-1'), True),
    (dict(task_names=['proj.add']), raw_message(2, 'id-1'), True),
    (dict(task_names=['proj.mail']), raw_message(2, 'id-1'), False),
    (dict(task_names=['proj.add'], ids=['id-2']), raw_message(2, 'id-1'), False),   # every selector must hold
    # Protocol 1 keeps id and task in its base64 body: never ruled out from the raw text.
    (dict(ids=['id-1']), raw_message(1, 'id-1'), True),
    (dict(ids=['id-9']), raw_message(1, 'id-1'), True),
    # A value JSON may write otherwise ("\"", non-ASCII as \u....) rules nothing out.
    (dict(task_names=['proj."add"']), raw_message(2, 'id-1'), True),
    (dict(task_names=['proj.ädd']), raw_message(2, 'id-1', task='proj.ädd'), True),
    (dict(args_contains=[1]), raw_message(2, 'id-1'), True),   # only ids and names are looked for
    (dict(ids=['id-1']), b'\xff junk', True),
])
def test_a_message_is_decoded_unless_its_raw_text_rules_it_out(selected, raw, may):
    selector = Selector(params(**selected))
    assert selector.may_match_raw(raw) is may
    if not may:   # never ruling out a message the selector matches
        assert not selector.matches(redis_view(raw, message_describer(selector)))
