# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""wait_until with fake probes: a fake clock for exact timings, and a few tiny real sleeps."""

import time

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils import _wait
from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError
from ansible_collections.celeryops.fleet.plugins.module_utils._wait import (
    check_wait_params, wait_argument_spec, wait_until)


class FakeClock(object):
    """Stands in for the ``time`` module of _wait: sleeping only moves the clock."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(_wait, 'time', fake)
    return fake


class Probe(object):
    """Returns the given (done, state) answers in turn, then repeats the last one."""

    def __init__(self, *answers, **kwargs):
        self.answers = list(answers)
        self.calls = 0
        self.clock = kwargs.get('clock')
        self.cost = kwargs.get('cost', 0.0)

    def __call__(self):
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.cost
        return self.answers[min(self.calls, len(self.answers)) - 1]


def describe(state):
    return "queue 'q' has %s ready messages (max_messages 0)" % state


# -- fake clock ---------------------------------------------------------------------------------

def test_done_at_once(clock):
    probe = Probe((True, 'ready'))
    assert wait_until(probe, 10, 1, describe) == ('ready', 0.0)
    assert probe.calls == 1
    assert clock.sleeps == []


def test_done_after_some_polls(clock):
    probe = Probe((False, 5), (False, 2), (True, 0))
    state, waited = wait_until(probe, 10, 1.5, describe)
    assert (state, waited, probe.calls) == (0, 3.0, 3)
    assert clock.sleeps == [1.5, 1.5]


def test_timeout_message_and_last_state(clock):
    probe = Probe((False, 7), (False, 6), (False, 5))
    with pytest.raises(BrokerError) as info:
        wait_until(probe, 5, 2, describe)
    error = info.value
    assert error.msg == "timed out after 5.0s (wait_timeout) waiting: queue 'q' has 5 ready messages (max_messages 0)"
    assert error.option == 'wait_timeout'
    assert error.details == dict(last_state=5)
    # Polls at 0, 2 and 4 s; the last sleep is cut to the deadline, where one more poll is made.
    assert clock.sleeps == [2, 2, 1]
    assert probe.calls == 4


def test_last_poll_at_the_deadline_can_still_succeed(clock):
    probe = Probe((False, 3), (True, 0))
    assert wait_until(probe, 0.5, 60, describe) == (0, 0.5)
    assert clock.sleeps == [0.5]


def test_zero_timeout_polls_once(clock):
    probe = Probe((False, 1))
    with pytest.raises(BrokerError) as info:
        wait_until(probe, 0, 1, describe)
    assert info.value.msg == "timed out after 0.0s (wait_timeout) waiting: queue 'q' has 1 ready messages " \
                             "(max_messages 0)"
    assert probe.calls == 1
    assert clock.sleeps == []


def test_slow_probe_counts_in_the_elapsed_time(clock):
    probe = Probe((False, 1), (False, 1), (True, 0), clock=clock, cost=3.0)
    state, waited = wait_until(probe, 20, 1, describe)
    assert (state, waited) == (0, 11.0)  # 3 probes of 3 s and 2 sleeps of 1 s


def test_slow_probe_past_the_deadline_times_out_without_sleeping(clock):
    probe = Probe((False, 9), clock=clock, cost=4.0)
    with pytest.raises(BrokerError) as info:
        wait_until(probe, 3, 1, describe)
    assert info.value.msg.startswith('timed out after 4.0s (wait_timeout) waiting: ')
    assert probe.calls == 1
    assert clock.sleeps == []


def test_describe_gets_the_last_state(clock):
    seen = []
    probe = Probe((False, {'n': 1}), (False, {'n': 2}))

    def tell(state):
        seen.append(state)
        return 'n=%d' % state['n']
    with pytest.raises(BrokerError) as info:
        wait_until(probe, 1, 1, tell)
    assert seen == [{'n': 2}]
    assert info.value.msg.endswith('waiting: n=2')
    assert info.value.details['last_state'] is seen[0]


def test_probe_errors_propagate(clock):
    def probe():
        raise BrokerError('cannot connect to redis h:6379 db 0', option='broker_url')
    with pytest.raises(BrokerError) as info:
        wait_until(probe, 10, 1, describe)
    assert info.value.msg == 'cannot connect to redis h:6379 db 0'


# -- real clock, tiny timeouts -----------------------------------------------------------------

def test_real_timeout_is_bounded():
    probe = Probe((False, 3))
    start = time.monotonic()
    with pytest.raises(BrokerError) as info:
        wait_until(probe, 0.05, 0.01, describe)
    elapsed = time.monotonic() - start
    assert 0.05 <= elapsed < 1.0
    assert probe.calls >= 2
    assert info.value.msg.startswith('timed out after 0.')
    assert info.value.details == dict(last_state=3)


def test_real_sleep_never_overshoots_the_deadline():
    probe = Probe((False, 3))
    start = time.monotonic()
    with pytest.raises(BrokerError):
        wait_until(probe, 0.05, 30, describe)
    assert time.monotonic() - start < 1.0
    assert probe.calls == 2


def test_real_success():
    probe = Probe((False, 1), (False, 1), (True, 'done'))
    state, waited = wait_until(probe, 5, 0.01, describe)
    assert state == 'done'
    assert 0.02 <= waited < 1.0


# -- options ------------------------------------------------------------------------------------

def test_wait_argument_spec():
    assert wait_argument_spec() == dict(wait=dict(type='bool', default=False),
                                        wait_timeout=dict(type='float', default=120.0),
                                        wait_sleep=dict(type='float', default=1.0))


@pytest.mark.parametrize('params', [
    dict(wait_timeout=120.0, wait_sleep=1.0),
    dict(wait_timeout=0.01, wait_sleep=0.01),
    dict(wait_timeout=None, wait_sleep=None),
])
def test_check_wait_params_ok(params):
    check_wait_params(params)


@pytest.mark.parametrize('params, option, msg', [
    (dict(wait_timeout=0, wait_sleep=1.0), 'wait_timeout', 'wait_timeout must be a positive number of seconds, got 0'),
    (dict(wait_timeout=-1.5, wait_sleep=1.0), 'wait_timeout',
     'wait_timeout must be a positive number of seconds, got -1.5'),
    (dict(wait_timeout=10.0, wait_sleep=0.0), 'wait_sleep', 'wait_sleep must be a positive number of seconds, got 0.0'),
    (dict(wait_timeout=10.0, wait_sleep=-1), 'wait_sleep', 'wait_sleep must be a positive number of seconds, got -1'),
    (dict(wait_timeout=0, wait_sleep=0), 'wait_timeout', 'wait_timeout must be a positive number of seconds, got 0'),
])
def test_check_wait_params_errors(params, option, msg):
    with pytest.raises(BrokerError) as info:
        check_wait_params(params)
    assert info.value.msg == msg
    assert info.value.option == option


# -- a broker that goes away while waiting ------------------------------------------------------

class Broker(object):
    """A probe and a reconnect against a broker that is away for some calls."""

    def __init__(self, clock, away_for, answers):
        self.clock = clock
        self.away_for = away_for   # how many probe/reconnect calls fail
        self.answers = list(answers)
        self.reconnects = 0

    def _maybe_lost(self):
        if self.away_for:
            self.away_for -= 1
            raise BrokerError('cannot connect to redis h:6379 db 0: Connection refused', option='broker_url',
                              endpoint='redis h:6379 db 0', lost=True)

    def probe(self):
        self._maybe_lost()
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def reconnect(self):
        self.reconnects += 1
        self._maybe_lost()


def test_reconnects_and_finishes_within_the_budget(clock):
    broker = Broker(clock, away_for=3, answers=[(True, 'empty')])
    state, waited = wait_until(broker.probe, 10, 1, describe, reconnect=broker.reconnect)
    assert state == 'empty'
    # Lost at 0 s; reconnects at 1 s and 2 s fail, the one at 3 s works and the probe says done.
    assert (waited, broker.reconnects, clock.sleeps) == (3.0, 3, [1, 1, 1])


def test_broker_that_stays_away_fails_saying_so(clock):
    broker = Broker(clock, away_for=1000, answers=[(False, 4)])
    with pytest.raises(BrokerError) as info:
        wait_until(broker.probe, 5, 2, describe, reconnect=broker.reconnect)
    error = info.value
    assert error.msg == ('the broker redis h:6379 db 0 went away while waiting and was not back within 5.0s '
                         '(wait_timeout): cannot connect to redis h:6379 db 0: Connection refused')
    assert (error.option, error.endpoint, error.details) == ('wait_timeout', 'redis h:6379 db 0', {})


def test_last_state_seen_before_the_broker_went_away_is_kept(clock):
    answers = iter([(False, 7)])

    def probe():
        for answer in answers:
            return answer
        raise BrokerError('lost the connection to redis h:6379 db 0', endpoint='redis h:6379 db 0', lost=True)
    with pytest.raises(BrokerError) as info:
        wait_until(probe, 3, 1, describe, reconnect=lambda: None)
    assert 'went away while waiting' in info.value.msg
    assert info.value.details == dict(last_state=7)


def test_errors_other_than_a_lost_broker_are_not_retried(clock):
    calls = []

    def probe():
        calls.append(1)
        raise BrokerError('authentication failed at redis h:6379 db 0', option='broker_password')
    with pytest.raises(BrokerError) as info:
        wait_until(probe, 10, 1, describe, reconnect=lambda: calls.append('reconnect'))
    assert info.value.msg == 'authentication failed at redis h:6379 db 0'
    assert calls == [1]


def test_without_reconnect_a_lost_broker_fails_at_once(clock):
    broker = Broker(clock, away_for=1, answers=[(True, 0)])
    with pytest.raises(BrokerError) as info:
        wait_until(broker.probe, 10, 1, describe)
    assert info.value.lost and info.value.msg.startswith('cannot connect')
    assert clock.sleeps == []
