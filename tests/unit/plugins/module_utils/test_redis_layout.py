# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kombu's Redis key layout, checked against kombu's own naming where it can be called offline."""

import fnmatch
from types import SimpleNamespace

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._redis_queues import (
    BINDING_PREFIXES, DEFAULT_PRIORITY_STEPS, DEFAULT_SEP, RedisLayout, is_internal_queue)

SEP = '\x06\x16'


def test_defaults_match_kombu():
    redis_transport = pytest.importorskip('kombu.transport.redis')
    assert DEFAULT_SEP == redis_transport.Channel.sep == SEP
    assert list(DEFAULT_PRIORITY_STEPS) == list(redis_transport.PRIORITY_STEPS) == [0, 3, 6, 9]
    assert redis_transport.Channel.keyprefix_queue % 'x' == BINDING_PREFIXES[0] + 'x'
    assert redis_transport.Channel.keyprefix_binding_permanent % 'x' == BINDING_PREFIXES[1] + 'x'


def test_default_keys():
    layout = RedisLayout()
    assert layout.steps == [0, 3, 6, 9]
    assert layout.keys('celery') == [(0, 'celery'), (3, 'celery' + SEP + '3'), (6, 'celery' + SEP + '6'),
                                     (9, 'celery' + SEP + '9')]
    assert layout.key('celery') == 'celery'
    assert layout.key('celery', 0) == 'celery'
    assert layout.key('celery', 9) == 'celery\x06\x169'
    assert layout.unacked == 'unacked'


@pytest.mark.parametrize('priority', range(0, 11))
def test_keys_are_kombus_keys(priority):
    """Whatever priority a producer gives, kombu LPUSHes to one of the layout's keys."""
    redis_transport = pytest.importorskip('kombu.transport.redis')
    channel = SimpleNamespace(sep=SEP, priority_steps=list(redis_transport.PRIORITY_STEPS))
    channel.priority = lambda n: redis_transport.Channel.priority(channel, n)
    kombu_key = redis_transport.Channel._q_for_pri(channel, 'q', priority)
    layout = RedisLayout()
    assert kombu_key in [key for _step, key in layout.keys('q')]
    step = channel.priority(priority)
    assert kombu_key == layout.key('q', step)


def test_priority_5_lands_in_step_3():
    redis_transport = pytest.importorskip('kombu.transport.redis')
    channel = SimpleNamespace(priority_steps=[0, 3, 6, 9])
    assert redis_transport.Channel.priority(channel, 5) == 3


def test_global_keyprefix():
    layout = RedisLayout('pfx:')
    assert layout.keys('q') == [(0, 'pfx:q'), (3, 'pfx:q' + SEP + '3'), (6, 'pfx:q' + SEP + '6'),
                                (9, 'pfx:q' + SEP + '9')]
    assert layout.unacked == 'pfx:unacked'
    assert layout.key('q', 0) == 'pfx:q'


def test_no_prefix_given_as_none():
    assert RedisLayout(None).key('q') == 'q'


def test_custom_sep():
    layout = RedisLayout(sep=':')
    assert layout.keys('q') == [(0, 'q'), (3, 'q:3'), (6, 'q:6'), (9, 'q:9')]
    assert RedisLayout('app/', [0, 5], '.').keys('q') == [(0, 'app/q'), (5, 'app/q.5')]


@pytest.mark.parametrize('given, steps', [
    ([5, 1], [0, 1, 5]),           # step 0 missing: kombu always has the bare key
    ([9, 3, 3, 0], [0, 3, 9]),     # unsorted, duplicated
    ([0], [0]),
    ([], [0]),
    (['6', '2'], [0, 2, 6]),       # numbers as text
    (list(range(10)), list(range(10))),
])
def test_steps(given, steps):
    layout = RedisLayout(priority_steps=given)
    assert layout.steps == steps
    assert [step for step, _key in layout.keys('q')] == steps
    assert layout.keys('q')[0] == (0, 'q')


def test_steps_missing_zero_keys():
    assert RedisLayout(priority_steps=(3, 6)).keys('q') == [(0, 'q'), (3, 'q' + SEP + '3'), (6, 'q' + SEP + '6')]


@pytest.mark.parametrize('prefix, key, exchange', [
    ('', '_kombu.binding.celery', 'celery'),
    ('', '_kombu.binding.', ''),
    ('', '_kombu.binding.celery.pidbox', 'celery.pidbox'),
    ('', '_kombu.binding.reply.celery.pidbox', 'reply.celery.pidbox'),
    ('', '_kombu.binding_permanent.tasks', 'tasks'),
    ('', '_kombu.binding_deadlines', None),
    ('', 'celery', None),
    ('', 'unacked', None),
    ('', 'pfx:_kombu.binding.celery', None),
    ('pfx:', 'pfx:_kombu.binding.celery', 'celery'),
    ('pfx:', 'pfx:_kombu.binding_permanent.celery', 'celery'),
    ('pfx:', '_kombu.binding.celery', None),
    ('pfx:', 'pfx:celery', None),
])
def test_exchange_of(prefix, key, exchange):
    assert RedisLayout(prefix).exchange_of(key) == exchange


def test_binding_pattern_covers_both_kinds_of_binding_sets():
    assert RedisLayout().binding_pattern() == '_kombu.binding*'
    assert RedisLayout('p:').binding_pattern() == 'p:_kombu.binding*'
    for prefix in BINDING_PREFIXES:
        assert fnmatch.fnmatchcase(prefix + 'celery', RedisLayout().binding_pattern())


def test_binding_pattern_escapes_glob_characters_of_the_prefix():
    assert RedisLayout('a*b?[c]\\:').binding_pattern() == 'a\\*b\\?\\[c\\]\\\\:_kombu.binding*'


def test_binding_member_splits_like_kombu():
    """Members of _kombu.binding.<exchange> are routing_key + sep + pattern + sep + queue."""
    layout = RedisLayout()
    member = layout.sep.join(['rk', '', 'queue'])
    assert member.split(layout.sep) == ['rk', '', 'queue']


@pytest.mark.parametrize('name, exchange, internal', [
    ('celery', None, False),
    ('celery', 'celery', False),
    ('default', '', False),
    ('celery@host.celery.pidbox', None, True),
    ('anything', 'celery.pidbox', True),
    ('0f1e.reply.celery.pidbox', None, True),
    ('x', 'reply.celery.pidbox', True),
    ('celeryev.8e5b1a', None, True),
    ('x', 'celeryev', True),
    ('amq.gen-JzTY20BRgKO-HjmUJj0wLg', None, True),
    ('pidbox', None, False),
    ('my.celeryev', None, False),
])
def test_is_internal_queue(name, exchange, internal):
    assert is_internal_queue(name, exchange) is internal
