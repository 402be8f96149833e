# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module harness: constraints in the collection's words, one failure with a scrubbed traceback."""

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils import _module
from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, OptionError

SECRET = 'Zk4harnessPW9'
SPEC = dict(state=dict(default='purged'), keep=dict(), queues=dict(), concurrency=dict(), autoscale=dict(),
            events=dict(), wait=dict(default=False), expected_nodes=dict(), expected_count=dict(),
            pool=dict(default='prefork'), size=dict())


def unmet(params, **constraints):
    full = dict((name, None) for name in SPEC)
    full.update(params)
    return _module.unmet_constraint(full, SPEC, **constraints)


# -- constraints: Ansible decides, the words are the collection's ----------------------------------

def test_required_if_names_the_missing_option_and_the_state():
    rule = [('state', 'trimmed', ['keep'])]
    assert unmet(dict(state='trimmed'), required_if=rule) == ('keep is required with state: trimmed', 'keep')
    assert unmet(dict(state='trimmed', keep=0), required_if=rule) is None
    assert unmet(dict(state='purged'), required_if=rule) is None
    assert unmet(dict(state='consuming'), required_if=[('state', 'consuming', ['queues'])]) == (
        'queues is required with state: consuming', 'queues')


def test_required_if_several_and_any_of():
    assert unmet(dict(state='x'), required_if=[('state', 'x', ['keep', 'queues'])]) == (
        'keep and queues are required with state: x', 'keep')
    assert unmet(dict(wait=True), required_if=[('wait', True, ['expected_nodes', 'expected_count'], True)]) == (
        'wait needs expected_nodes or expected_count', 'wait')
    assert unmet(dict(wait=True, expected_count=1),
                 required_if=[('wait', True, ['expected_nodes', 'expected_count'], True)]) is None


def test_a_null_counts_as_left_out():
    # Ansible itself takes keep: null as given; an empty variable must not pass for a value.
    assert unmet(dict(state='trimmed', keep=None), required_if=[('state', 'trimmed', ['keep'])])[1] == 'keep'


def test_mutually_exclusive_names_the_last_option():
    group = [('concurrency', 'autoscale')]
    assert unmet(dict(concurrency=2, autoscale=[4, 2]), mutually_exclusive=group) == (
        'concurrency and autoscale exclude each other', 'autoscale')
    assert unmet(dict(concurrency=2), mutually_exclusive=group) is None


def test_mutually_exclusive_ignores_an_option_at_its_default():
    assert unmet(dict(pool='prefork', size=3), mutually_exclusive=[('pool', 'size')]) is None
    assert unmet(dict(pool='solo', size=3), mutually_exclusive=[('pool', 'size')])[1] == 'size'


def test_required_one_of_together_and_by():
    assert unmet(dict(state='purged'), required_one_of=[('state', 'concurrency', 'autoscale', 'events')]) is None
    assert unmet({}, required_one_of=[('keep', 'concurrency', 'autoscale', 'events')]) == (
        'nothing to do: give keep, concurrency, autoscale or events', 'keep')
    assert unmet(dict(keep=1), required_together=[('keep', 'queues')]) == ('keep and queues go together', 'queues')
    assert unmet(dict(keep=1), required_by={'keep': ['queues']}) == ('keep needs queues', 'keep')
    assert unmet(dict(keep=1, queues=['q']), required_by={'keep': 'queues'}) is None


# -- the failure path ------------------------------------------------------------------------------

class FakeModule(object):
    def __init__(self):
        self.failed = None

    def fail_json(self, **kwargs):
        self.failed = kwargs
        raise SystemExit(1)


def harness(params):
    """A FleetModule without Ansible's start-up: its failure path only."""
    module = object.__new__(_module.FleetModule)
    module.params = params
    module.no_log_values = set(value for value in (params.get('broker_url'), params.get('broker_password')) if value)
    fake = FakeModule()
    module.fail_json = fake.fail_json
    return module, fake


def params(**overrides):
    out = dict(broker_url='redis://user:%s@127.0.0.1:6379/0' % SECRET, broker_password=None, connect_timeout=5.0,
               tls_ca_file=None, tls_cert_file=None, tls_key_file=None, tls_verify=None)
    out.update(overrides)
    return out


def raised(library_message, error):
    """``error`` raised while handling a library's exception that carries ``library_message``."""
    try:
        try:
            raise ConnectionError(library_message)
        except ConnectionError:
            raise error
    except BrokerError as caught:
        return caught


def test_the_traceback_tells_the_cause_and_never_the_password():
    module, fake = harness(params())
    error = raised('refused by redis://user:%s@127.0.0.1:6379/0 (%s)' % (SECRET, SECRET),
                   BrokerError('cannot connect to redis 127.0.0.1:6379 db 0: refused', option='broker_url',
                               endpoint='redis 127.0.0.1:6379 db 0', details=dict(last_state=[1])))
    with pytest.raises(SystemExit):
        module.fail_from_error(error, queues=[], changed=False)
    failed = fake.failed
    assert failed['msg'] == 'cannot connect to redis 127.0.0.1:6379 db 0: refused'
    assert (failed['option'], failed['endpoint'], failed['last_state']) == ('broker_url', 'redis 127.0.0.1:6379 db 0', [1])
    assert failed['queues'] == [] and failed['changed'] is False
    trace = failed['exception']
    assert trace.startswith('Traceback') and 'ConnectionError' in trace and 'BrokerError' in trace
    assert SECRET not in trace and '********' in trace


def test_the_message_is_redacted_too():
    # A message of ours never holds a password; should one ever pass one on, it is masked.
    module, fake = harness(params(broker_url='redis://127.0.0.1/0', broker_password=SECRET))
    with pytest.raises(SystemExit):
        module.fail_from_error(raised('x', OptionError('bad value %s' % SECRET, option='broker_password')))
    assert SECRET not in fake.failed['msg'] and fake.failed['option'] == 'broker_password'
    assert SECRET not in fake.failed['exception']


def test_a_malformed_url_is_no_reason_to_show_its_password():
    module, fake = harness(params(broker_url='redis://user:%s/more@127.0.0.1:99999/0' % SECRET))
    assert module.secrets() == ['redis://user:%s/more@127.0.0.1:99999/0' % SECRET, SECRET + '/more', SECRET]
    with pytest.raises(SystemExit):
        module.fail_from_error(raised('port %s' % SECRET, OptionError('broker_url: the port', option='broker_url')))
    assert SECRET not in fake.failed['exception']


def test_fail_on_error_keeps_the_result_so_far():
    module, fake = harness(params())
    result = dict(changed=False, queues=[])
    with pytest.raises(SystemExit):
        with module.fail_on_error(result):
            result['queues'].append('done')
            raise OptionError('peek must be between 0 and 10000, got -1', option='peek')
    assert fake.failed['queues'] == ['done'] and fake.failed['option'] == 'peek'


def test_an_option_error_is_a_broker_error_for_callers_that_catch_those():
    assert issubclass(OptionError, BrokerError)


def test_failure():
    error = BrokerError('cannot connect', option='broker_url', endpoint='redis h:1 db 0', details=dict(extra=2))
    assert _module.failure(error, queues=[], changed=False) == dict(
        msg='cannot connect', option='broker_url', endpoint='redis h:1 db 0', extra=2, queues=[], changed=False)


def test_failure_keeps_given_values():
    assert _module.failure(BrokerError('x'), option='mine') == dict(msg='x', option='mine')


def test_missing_library_is_none_when_the_library_imports():
    assert _module.missing_library(dict(broker_url='redis://h/0')) is None
    assert _module.missing_library(dict(broker_url='amqp://h//')) is None
    assert _module.missing_library(dict(broker_url=None)) is None
