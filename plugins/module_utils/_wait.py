# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Polling on a monotonic clock, with a timeout error that says what was awaited."""

from __future__ import annotations

import time

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, check_seconds


def wait_argument_spec():
    """Options of doc fragment celeryops.fleet.wait."""
    return dict(
        wait=dict(type='bool', default=False),
        wait_timeout=dict(type='float', default=120.0),
        wait_sleep=dict(type='float', default=1.0),
    )


def check_wait_params(params):
    for option in ('wait_timeout', 'wait_sleep'):
        if params[option] is not None:
            check_seconds(params[option], option)


def wait_in_result(result, probe, params, describe, keep, reconnect=None):
    """``wait_until`` with the module's O(wait_timeout) and O(wait_sleep), for a module that returns what it saw: on
    timeout ``keep(result, last state)`` puts the state last seen into ``result`` before the error goes on (it is what
    the module returns, not a detail of the failure). Returns the state; ``result['waited']`` says how long it took."""
    try:
        state, waited = wait_until(probe, params['wait_timeout'], params['wait_sleep'], describe, reconnect=reconnect)
    except BrokerError as error:
        if 'last_state' in error.details:
            keep(result, error.details.pop('last_state'))
        raise
    result['waited'] = round(waited, 3)
    return state


def wait_until(probe, timeout, sleep, describe, reconnect=None, lost=None):
    """Call ``probe()`` until it returns (True, state) or ``timeout`` seconds pass.

    Returns (state, elapsed seconds). On timeout raises BrokerError with ``describe(state)``
    telling what was awaited and the last value seen; the last state rides along in
    ``details`` so modules can still return it.

    With ``reconnect``, a broker that goes away (restart, lost or silent connection) is
    reconnected to, every ``sleep`` seconds, within the same ``timeout``; if it is not back
    in time the error says it went away. ``lost`` is the error that lost it before the wait
    began: then the wait starts by reconnecting.
    """
    start = time.monotonic()
    deadline = start + timeout
    state = None
    # lost: why the broker is away, while it is
    while True:
        done = False
        try:
            if lost is not None:
                reconnect()
            done, state = probe()
            lost = None
        except BrokerError as error:
            if reconnect is None or not error.lost:
                raise
            lost = error
        now = time.monotonic()
        if done:
            return state, now - start
        if now >= deadline:
            details = dict(last_state=state) if state is not None else {}
            if lost is not None:
                raise BrokerError('the broker%s went away while waiting and was not back within %.1fs (wait_timeout): '
                                  '%s' % (' ' + lost.endpoint if lost.endpoint else '', timeout, lost.msg),
                                  option='wait_timeout',
                                  endpoint=lost.endpoint, details=details)
            raise BrokerError('timed out after %.1fs (wait_timeout) waiting: %s' % (now - start, describe(state)),
                              option='wait_timeout', details=details)
        time.sleep(max(0.0, min(sleep, deadline - now)))
