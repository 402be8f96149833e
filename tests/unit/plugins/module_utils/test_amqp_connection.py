# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AMQP connection's time limit on blocking calls (pure logic: no broker)."""

import signal
import threading
import time

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._amqp_connection import time_limit
from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError


# -- time_limit ----------------------------------------------------------------------------------

def test_time_limit_interrupts_a_silent_call():
    start = time.monotonic()
    with pytest.raises(BrokerError) as info:
        with time_limit(0.1, 'waiting for amqp h:5672 vhost /'):
            time.sleep(5)
    assert time.monotonic() - start < 2
    assert info.value.msg == 'timed out after 0.1s waiting for amqp h:5672 vhost /'
    assert info.value.option == 'connect_timeout'


def test_time_limit_restores_the_handler_and_clears_the_alarm():
    before = signal.getsignal(signal.SIGALRM)
    with time_limit(0.2, 'x'):
        pass
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    time.sleep(0.3)  # an alarm left armed would fire here


def test_time_limit_none_is_no_limit():
    with time_limit(None, 'x'):
        time.sleep(0.01)


def test_time_limit_is_a_no_op_outside_the_main_thread():
    outcome = []

    def run():
        try:
            with time_limit(0.01, 'x'):
                time.sleep(0.05)
            outcome.append('ok')
        except Exception as exc:  # pragma: no cover - the failure being tested for
            outcome.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert outcome == ['ok']


def test_nested_time_limit_keeps_the_outer_limit():
    start = time.monotonic()
    with pytest.raises(BrokerError) as info:
        with time_limit(0.3, 'outer'):
            with time_limit(5, 'inner'):
                time.sleep(0.05)
            time.sleep(5)  # the outer limit must still interrupt this
    assert info.value.msg == 'timed out after 0.3s outer'
    assert time.monotonic() - start < 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_inner_time_limit_longer_than_the_outer_one_does_not_extend_it():
    start = time.monotonic()
    with pytest.raises(BrokerError) as info:
        with time_limit(0.2, 'outer'):
            with time_limit(5, 'inner'):
                time.sleep(5)
    assert info.value.msg == 'timed out after 0.2s outer'
    assert time.monotonic() - start < 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_time_limit_with_progress_waits_while_data_arrives_and_then_only_for_silence():
    received = [0]

    def trickle(seconds):  # a reply behind a stream of deliveries: bytes every 0.05 s
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.05)
            received[0] += 1
    start = time.monotonic()
    with time_limit(0.2, 'x', progress=lambda: received[0]):
        trickle(0.6)
    assert time.monotonic() - start >= 0.6  # three times the limit, never interrupted
    with pytest.raises(BrokerError) as info:
        with time_limit(0.2, 'waiting on amqp h:5672 vhost /', progress=lambda: received[0]):
            trickle(0.3)
            time.sleep(5)  # then silence: interrupted one limit after the last byte
    assert info.value.msg == 'timed out after 0.2s waiting on amqp h:5672 vhost /'
    assert time.monotonic() - start < 0.6 + 0.3 + 0.2 + 1.5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
