# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Thresholds and option checks of celery_queue_info and celery_queue: exact messages, no broker."""

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils import _module, _queues
from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, OptionError
from ansible_collections.celeryops.fleet.plugins.modules import celery_queue, celery_queue_info


def info_params(**overrides):
    params = dict(queues=None, include_internal=False, peek=0, breakdown=False, max_messages=None, max_unacked=None,
                  min_consumers=None, wait=False, wait_timeout=120.0, wait_sleep=1.0)
    params.update(overrides)
    return params


def queue_params(**overrides):
    params = dict(queues=['q'], state='purged', task_names=None, keep=None, drop='oldest')
    params.update(overrides)
    return params


def state(name='q', messages=0, unacked=0, consumers=None):
    return dict(name=name, exists=True, messages=messages, unacked=unacked, consumers=consumers)


def failure(check, params):
    with pytest.raises(BrokerError) as info:
        check(params)
    return info.value


def unmet_thresholds(states, params):
    """The phrases of celery_queue_info's unmet thresholds; each problem's option is the one its phrase names."""
    problems = celery_queue_info.unmet_thresholds(states, params)
    for problem in problems:
        assert problem.text.endswith('(%s %d)' % (problem.option, params[problem.option])), problem
    return [problem.text for problem in problems]


# -- unmet_thresholds ---------------------------------------------------------------------------

def test_no_thresholds_nothing_unmet():
    assert unmet_thresholds([state(messages=10 ** 6, unacked=5, consumers=0)], info_params()) == []


def test_max_messages():
    params = info_params(max_messages=0)
    assert unmet_thresholds([state(messages=0)], params) == []
    assert unmet_thresholds([state('emails', messages=5)], params) == [
        "queue 'emails' has 5 ready messages (max_messages 0)"]


def test_max_messages_is_inclusive():
    assert unmet_thresholds([state(messages=10)], info_params(max_messages=10)) == []
    assert unmet_thresholds([state(messages=11)], info_params(max_messages=10)) == [
        "queue 'q' has 11 ready messages (max_messages 10)"]


def test_max_unacked():
    params = info_params(max_unacked=2)
    assert unmet_thresholds([state(unacked=2)], params) == []
    assert unmet_thresholds([state(unacked=3)], params) == [
        "queue 'q' has 3 unacked messages (max_unacked 2)"]


def test_min_consumers():
    params = info_params(min_consumers=2)
    assert unmet_thresholds([state(consumers=2)], params) == []
    assert unmet_thresholds([state(consumers=1)], params) == [
        "queue 'q' has 1 consumers (min_consumers 2)"]
    assert unmet_thresholds([state(consumers=None)], params) == [
        "queue 'q' has 0 consumers (min_consumers 2)"]


def test_every_queue_and_threshold_in_order():
    params = info_params(max_messages=0, max_unacked=0, min_consumers=1)
    states = [state('a', messages=3, unacked=1, consumers=0), state('b'), state('c', messages=1, consumers=4)]
    assert unmet_thresholds(states, params) == [
        "queue 'a' has 3 ready messages (max_messages 0)",
        "queue 'a' has 1 unacked messages (max_unacked 0)",
        "queue 'a' has 0 consumers (min_consumers 1)",
        "queue 'b' has 0 consumers (min_consumers 1)",
        "queue 'c' has 1 ready messages (max_messages 0)",
    ]


def test_thresholds_of_zero_are_thresholds():
    # 0 is a real threshold, not "unset".
    params = info_params(max_messages=0, max_unacked=0, min_consumers=0)
    assert unmet_thresholds([state(messages=1)], params) == [
        "queue 'q' has 1 ready messages (max_messages 0)"]


def test_unknown_unacked_does_not_meet_max_unacked():
    # RabbitMQ without the management API cannot tell: max_unacked must not pass unchecked.
    assert unmet_thresholds([state('q', unacked=None)], info_params(max_unacked=0)) == [
        "queue 'q' has an unknown number of unacked messages: the management API could not be used (max_unacked 0)"]
    assert unmet_thresholds([state('q', unacked=None)], info_params(max_messages=0)) == []


# -- celery_queue_info.check_params ------------------------------------------------------------

@pytest.mark.parametrize('overrides', [
    dict(),
    dict(queues=['a', 'b']),
    dict(peek=0), dict(peek=10000),
    dict(max_messages=0, max_unacked=0, min_consumers=0),
    dict(wait=True, wait_timeout=0.1, wait_sleep=0.1),
])
def test_info_params_ok(overrides):
    assert celery_queue_info.check_params(info_params(**overrides)) is None


@pytest.mark.parametrize('overrides, option, msg', [
    (dict(peek=-1), 'peek', 'peek must be between 0 and 10000, got -1'),
    (dict(peek=10001), 'peek', 'peek must be between 0 and 10000, got 10001'),
    (dict(max_messages=-5), 'max_messages', 'max_messages must be 0 or more, got -5'),
    (dict(max_unacked=-1), 'max_unacked', 'max_unacked must be 0 or more, got -1'),
    (dict(min_consumers=-2), 'min_consumers', 'min_consumers must be 0 or more, got -2'),
    (dict(queues=['ok', '']), 'queues', 'queues: a queue name is empty'),
    (dict(queues=['  ']), 'queues', 'queues: a queue name is empty'),
    (dict(wait_timeout=0), 'wait_timeout', 'wait_timeout must be a positive number of seconds, got 0'),
    (dict(wait_sleep=-1.0), 'wait_sleep', 'wait_sleep must be a positive number of seconds, got -1.0'),
])
def test_info_params_errors(overrides, option, msg):
    error = failure(celery_queue_info.check_params, info_params(**overrides))
    assert error.msg == msg
    assert error.option == option


def test_problems_name_their_option():
    params = info_params(max_messages=0, max_unacked=0, min_consumers=1)
    states = [state('a', messages=3, unacked=None, consumers=0)]
    assert [p.option for p in celery_queue_info.unmet_thresholds(states, params)] == [
        'max_messages', 'max_unacked', 'min_consumers']


def test_option_errors_are_option_errors():
    assert isinstance(failure(celery_queue_info.check_params, info_params(peek=-1)), OptionError)
    assert isinstance(failure(celery_queue.check_params, queue_params(keep=3)), OptionError)


def test_info_wait_options_checked_first():
    error = failure(celery_queue_info.check_params, info_params(wait_timeout=-1, peek=-1, queues=['']))
    assert error.option == 'wait_timeout'


# -- celery_queue.check_params -----------------------------------------------------------------

@pytest.mark.parametrize('overrides', [
    dict(),
    dict(task_names=['proj.tasks.add']),
    dict(state='trimmed', keep=0),
    dict(state='trimmed', keep=1000, drop='newest'),
    dict(queues=['a', 'b'], state='purged'),
])
def test_queue_params_ok(overrides):
    assert celery_queue.check_params(queue_params(**overrides)) is None


@pytest.mark.parametrize('overrides, option, msg', [
    (dict(queues=[]), 'queues', 'queues must name at least one queue'),
    (dict(queues=None), 'queues', 'queues must name at least one queue'),
    (dict(queues=['q', '']), 'queues', 'queues: a queue name is empty'),
    (dict(state='trimmed', keep=-1), 'keep', 'keep must be 0 or more, got -1'),
    (dict(state='trimmed', keep=5, task_names=['t']), 'task_names', 'task_names only goes with state: purged'),
    (dict(keep=3), 'keep', 'keep only goes with state: trimmed, not state: purged'),
    (dict(keep=0), 'keep', 'keep only goes with state: trimmed, not state: purged'),
])
def test_queue_params_errors(overrides, option, msg):
    error = failure(celery_queue.check_params, queue_params(**overrides))
    assert error.msg == msg
    assert error.option == option


def test_keep_is_required_with_state_trimmed():
    # Declared to Ansible (required_if); the harness words the failure. An explicit null counts as left out.
    for params in (queue_params(state='trimmed'), queue_params(state='trimmed', keep=None)):
        msg, option = _module.unmet_constraint(params, {}, required_if=celery_queue.REQUIRED_IF)
        assert msg == 'keep is required with state: trimmed'
        assert option == 'keep'
    assert _module.unmet_constraint(queue_params(), {}, required_if=celery_queue.REQUIRED_IF) is None


def test_queue_empty_task_name():
    error = failure(celery_queue.check_params, queue_params(task_names=['proj.tasks.add', ' ']))
    assert error.option == 'task_names'
    assert error.msg.startswith('task_names: ')


def test_trimmed_with_empty_task_names_list_is_fine():
    assert celery_queue.check_params(queue_params(state='trimmed', keep=1, task_names=[])) is None


def test_purged_with_empty_task_names_list_is_refused():
    # An empty variable must not widen a filtered purge to every message.
    with pytest.raises(BrokerError) as error:
        celery_queue.check_params(queue_params(state='purged', task_names=[]))
    assert error.value.option == 'task_names' and 'empty list' in error.value.msg


# -- shared queue options (checked before any connection) ----------------------------------------

def shared_params(**overrides):
    params = dict(broker_url='redis://127.0.0.1:1/0', broker_password=None, connect_timeout=0.1, tls_ca_file=None,
                  tls_cert_file=None, tls_key_file=None, tls_verify=None, global_keyprefix='',
                  priority_steps=[0, 3, 6, 9], sep='\x06\x16', management_url=None, management_user=None,
                  management_password=None, management_validate_certs=True)
    params.update(overrides)
    return params


@pytest.mark.parametrize('steps', [[], [0, 300], [-1, 3]])
def test_priority_steps_checked_before_connecting(steps):
    error = failure(_queues.open_queues, shared_params(priority_steps=steps))
    assert error.msg == 'priority_steps must be a non-empty list of numbers from 0 to 255, got %s' % steps
    assert error.option == 'priority_steps'


def test_empty_sep_checked_before_connecting():
    error = failure(_queues.open_queues, shared_params(sep=''))
    assert error.msg == 'sep must not be empty'
    assert error.option == 'sep'


def test_broker_url_checked_before_anything():
    error = failure(_queues.open_queues, shared_params(broker_url='kafka://h', sep=''))
    assert error.option == 'broker_url'


def test_queue_options_spec_hides_the_management_password():
    spec = _queues.queue_options_argument_spec()
    assert spec['management_password']['no_log'] is True
    transport = _queues.redis_transport_argument_spec()
    assert transport['priority_steps']['default'] == [0, 3, 6, 9]
    assert transport['sep']['default'] == '\x06\x16'
