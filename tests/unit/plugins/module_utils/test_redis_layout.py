# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kombu's Redis key layout, checked against kombu's own naming where it can be called offline."""

import fnmatch
from types import SimpleNamespace

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError
from ansible_collections.celeryops.fleet.plugins.module_utils._celery_names import is_internal_queue
from ansible_collections.celeryops.fleet.plugins.module_utils._redis_queues import (
    BINDING_PREFIXES, DEFAULT_PRIORITY_STEPS, DEFAULT_SEP, Bindings, RedisLayout, route, topic_matches)

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


# Binding keys and routing keys, kombu's quirks included: '#' is '.*?' between the dots kombu keeps ('report.#'
# needs 'report.' and something or nothing after it), '*' inside a word repeats the character before it, '$'
# matches before a final newline, and a pattern Python refuses routes nothing.
TOPIC_CASES = [
    ('report.#', ['report.daily', 'report.daily.eu', 'report.', 'report', 'reports.daily', 'x.report.daily',
                  'report.\n', 'report.a\nb']),
    ('*.weekly', ['report.weekly', 'weekly', '.weekly', 'a.b.weekly', 'a\nb.weekly', 'report.weekly\n']),
    ('#', ['', 'a', 'a.b', '\n', 'a\n', 'a\nb']),
    ('*', ['', 'a', 'a.b', 'ab\n']),
    ('a.*.c', ['a.b.c', 'a..c', 'a.b.b.c']),
    ('#.c', ['c', '.c', 'a.c', 'a.b.c', 'ac']),
    ('a.#.c', ['a.c', 'a..c', 'a.b.c', 'a.b.d.c']),
    ('#.#', ['.', 'a.b', 'a', '']),
    ('ab*c', ['ac', 'abc', 'abbbc', 'ab*c']),
    ('a.*b', ['ab', 'a.b', 'a...b', 'a.xb']),
    ('*a', ['a', '*a']),
    ('a**', ['a', 'aa']),
    ('a#b', ['a#b', 'ab']),
    ('plain', ['plain', 'plai', 'plainer', 'plain\n']),
    ('dots.in.key', ['dots.in.key', 'dotsXinXkey']),
    ('odd+(chars)?[x]|$^', ['odd+(chars)?[x]|$^', 'odd']),
    ('', ['', '\n', 'a']),
    ('caf\u00e9.*', ['caf\u00e9.x', 'cafe.x']),
    ('nul\x00.x', ['nul\x00.x', 'nul.x']),
]


@pytest.mark.parametrize('binding_key, routing_keys', TOPIC_CASES)
def test_topic_matching_is_kombus(binding_key, routing_keys):
    import re
    exchange = pytest.importorskip('kombu.transport.virtual.exchange')
    topic = exchange.TopicExchange(None)
    for routing_key in routing_keys:
        try:
            expected = bool(topic._match(topic.key_to_pattern(binding_key), routing_key))
        except re.error:
            expected = False
        assert topic_matches(binding_key, routing_key) is expected, (binding_key, routing_key)


def test_topic_matching_takes_linear_time():
    """kombu's regular expression would backtrack for ages over this; matching here does not."""
    import time
    start = time.monotonic()
    assert topic_matches('#.' * 30 + 'x', '.' * 5000 + 'y') is False
    assert time.monotonic() - start < 30  # generous: seconds on a loaded machine, not years


def test_route_direct_topic_fanout_and_default_exchange():
    bindings = Bindings(direct=[('a', 'qa'), ('b', 'qb')], topic=[('report.#', 'reports'), ('*.weekly', 'weekly')],
                        fanout=[('#', 'f1'), ('b', 'f2')])
    bindings.topic.add('topic')
    assert route(bindings, 'direct', 'a') == ['qa']
    assert route(bindings, 'topic', 'report.weekly') == ['reports', 'weekly']
    assert route(bindings, 'topic', 'nothing') == []
    assert route(bindings, 'fanout', 'news') == ['f1', 'f2']   # no key equal: every queue bound
    assert route(bindings, '', 'celery') == ['celery']
    assert route(bindings, 'unknown', 'x') == []


@pytest.mark.parametrize('sep, name, misread', [
    (SEP, 'default' + SEP + '3', ('default', '3')),
    (SEP, 'default' + SEP + '12', ('default', '12')),
    (SEP, 'a' + SEP + '9' + SEP + 'x', ('a', '9')),
    (SEP, 'default' + SEP + 'x', None),
    (SEP, 'default3', None),
    (SEP, SEP + '0', ('', '0')),
    (':', 'default:3', ('default', '3')),
    (':', 'tenant:default', None),
])
def test_priority_list_names(sep, name, misread):
    layout = RedisLayout(sep=sep)
    assert layout.priority_list_of(name) == misread
    if misread:
        with pytest.raises(BrokerError) as error:
            layout.check_queue_name(name)
        assert error.value.option == 'queues'
        assert repr(sep) in str(error.value) and "priority step %s of queue %r" % (misread[1], misread[0]) in str(
            error.value)
    else:
        layout.check_queue_name(name)
