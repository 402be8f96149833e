# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module harness: what every module of the collection does before and after its own work.

``FleetModule`` is an AnsibleModule that takes the shared options (broker, kombu's Redis transport, and on
request the management API and wait options), checks that the broker's Python library imports, and hands
Ansible the constraints between options (``mutually_exclusive``, ``required_if``, ...) while wording their
failures as the rest of the collection words its own. A module's ``main()`` is then::

    module = FleetModule(argument_spec=dict(...), required_if=[...])
    result = dict(changed=False)
    with module.fail_on_error(result):
        ...  # the module's own work, which raises OptionError or BrokerError
    module.exit_json(**result)

and an error ends it in one ``fail_json``: the message (secrets masked), the option at fault, the endpoint,
what the result held so far, and a traceback with every secret masked (shown at -vvv; from ansible-core 2.19
with ANSIBLE_DISPLAY_TRACEBACK=error).

Private to celeryops.fleet; the API may change between releases.
"""

from __future__ import annotations

import contextlib
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.validation import (
    check_mutually_exclusive, check_required_by, check_required_if, check_required_one_of, check_required_together)
from ansible.module_utils.errors import (
    MutuallyExclusiveError, RequiredByError, RequiredIfError, RequiredOneOfError, RequiredTogetherError)

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (
    USER_HIDDEN_WARNING, BrokerError, broker_argument_spec, broker_from_params, passwords_in_urls, redact_secrets)
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import (
    queue_options_argument_spec, redis_transport_argument_spec)
from ansible_collections.celeryops.fleet.plugins.module_utils._wait import wait_argument_spec

# Ansible's errors for the constraints a module declares: these failures are worded here.
_CONSTRAINT_ERRORS = (MutuallyExclusiveError, RequiredTogetherError, RequiredOneOfError, RequiredIfError,
                      RequiredByError)


def missing_library(params):
    """(library name, import traceback) the broker of ``params`` needs but cannot import, else None.

    Each library is imported (guarded) by its connection module, and only for its own broker: pika is a good
    part of a Redis check's start-up time otherwise. A library that did not import is tried again (has_redis,
    has_pika): under Mitogen the connection module may come from an earlier task of the same interpreter."""
    url = (params.get('broker_url') or '').lower()
    if url.startswith(('redis', 'rediss', 'sentinel')):
        from ansible_collections.celeryops.fleet.plugins.module_utils import _redis_connection
        if not _redis_connection.has_redis():
            return 'redis', _redis_connection.REDIS_IMPORT_ERROR
    if url.startswith(('amqp', 'pyamqp')):
        from ansible_collections.celeryops.fleet.plugins.module_utils import _amqp_connection
        if not _amqp_connection.has_pika():
            return 'pika', _amqp_connection.PIKA_IMPORT_ERROR
    return None


def _words(names, conjunction):
    """'a', 'a and b', 'a, b and c'."""
    names = list(names)
    return names[0] if len(names) == 1 else '%s %s %s' % (', '.join(names[:-1]), conjunction, names[-1])


def unmet_constraint(params, spec, mutually_exclusive=None, required_together=None, required_one_of=None,
                     required_if=None, required_by=None):
    """(message, option) of the first constraint, in Ansible's order, that ``params`` break; None if all hold.

    Ansible's own checks decide; only the words are this collection's. An option set to null counts as left
    out (Ansible counts it as given); for ``mutually_exclusive`` so does an option at its default.
    """
    given = dict((name, value) for name, value in params.items() if value is not None)
    chosen = dict((name, value) for name, value in given.items()
                  if spec.get(name, {}).get('default') is None or value != spec[name]['default'])
    for group in mutually_exclusive or ():
        try:
            check_mutually_exclusive([group], chosen)
        except TypeError:
            return '%s exclude each other' % _words(group, 'and'), group[-1]
    for group in required_together or ():
        try:
            check_required_together([group], given)
        except TypeError:
            return '%s go together' % _words(group, 'and'), [name for name in group if name not in given][0]
    for group in required_one_of or ():
        try:
            check_required_one_of([group], given)
        except TypeError:
            return 'nothing to do: give %s' % _words(group, 'or'), group[0]
    for rule in required_if or ():
        try:
            check_required_if([rule], given)
        except TypeError:
            key, value, needed = rule[:3]
            any_of = len(rule) > 3 and rule[3]
            if value is True:
                return '%s needs %s' % (key, _words(needed, 'or' if any_of else 'and')), key
            missing = [name for name in needed if name not in given]
            verb = 'is' if any_of or len(missing) == 1 else 'are'
            return ('%s %s required with %s: %s' % (_words(missing, 'or' if any_of else 'and'), verb, key, value),
                    missing[0])
    for key, needed in (required_by or {}).items():
        try:
            check_required_by({key: needed}, given)
        except TypeError:
            needed = [needed] if isinstance(needed, str) else needed
            return '%s needs %s' % (key, _words([name for name in needed if name not in given], 'and')), key
    return None


def failure(error, **result):
    """The fail_json arguments for ``error``: its message, option, endpoint and details, over ``result``
    (what the caller gave wins for option and endpoint)."""
    if error.endpoint:
        result.setdefault('endpoint', error.endpoint)
    if error.option:
        result.setdefault('option', error.option)
    result.update(error.details)
    result['msg'] = error.msg
    return result


class FleetModule(AnsibleModule):
    """An AnsibleModule with the shared options, the library check and one failure path (see the top)."""

    def __init__(self, argument_spec, queue_options=False, wait_options=False, **kwargs):
        """``argument_spec``: the module's own options, merged over the broker and Redis transport options;
        ``queue_options``: add the management API options; ``wait_options``: add wait, wait_timeout and
        wait_sleep. The rest goes to AnsibleModule (supports_check_mode defaults to True)."""
        spec = broker_argument_spec()
        spec.update(redis_transport_argument_spec())
        if queue_options:
            spec.update(queue_options_argument_spec())
        if wait_options:
            spec.update(wait_argument_spec())
        spec.update(argument_spec)
        kwargs.setdefault('supports_check_mode', True)
        self._validating = True   # while AnsibleModule checks the options: see fail_json
        try:
            super(FleetModule, self).__init__(argument_spec=spec, **kwargs)
        finally:
            self._validating = False
        # Ansible counts an option set to null as given: a variable that came out empty must not pass.
        self._fail_on_unmet_constraint()
        missing = missing_library(self.params)
        if missing:
            self.fail_json(msg=missing_required_lib(missing[0]), exception=missing[1])

    def _unmet_constraint(self):
        return unmet_constraint(self.params, self.argument_spec, self.mutually_exclusive, self.required_together,
                                self.required_one_of, self.required_if, self.required_by)

    def _fail_on_unmet_constraint(self):
        unmet = self._unmet_constraint()
        if unmet:
            self.fail_json(msg=unmet[0], option=unmet[1])

    def fail_json(self, *args, **kwargs):
        """AnsibleModule's, except that a declared constraint the options break is told in this collection's
        words, naming the option (Ansible's: 'state is trimmed but all of the following are missing: keep')."""
        validation = getattr(self, 'validation_result', None)
        first = validation.errors[0] if self._validating and validation is not None and validation.error_messages else None
        if isinstance(first, _CONSTRAINT_ERRORS):
            self._validating = False
            unmet = self._unmet_constraint()
            if unmet:
                args = ()
                kwargs.update(msg=unmet[0], option=unmet[1])
        super(FleetModule, self).fail_json(*args, **kwargs)

    def exit_json(self, **kwargs):
        """AnsibleModule's, with a warning when the broker facts leave the user out (see BrokerURL.user_hidden)."""
        broker = self._broker()
        if broker is not None and broker.user_hidden:
            self.warn(USER_HIDDEN_WARNING)
        super(FleetModule, self).exit_json(**kwargs)

    def _broker(self):
        """The broker the options name, or None when they name none that parses."""
        try:
            return broker_from_params(self.params)
        except BrokerError:
            return None

    def secrets(self):
        """What must never show: the values of no_log options, and the password inside broker_url (also when
        the URL does not parse: its pieces too)."""
        found = set(value for value in self.no_log_values if isinstance(value, str) and value)
        for value in list(found):
            found.update(passwords_in_urls(value))
        broker = self._broker()
        if broker is not None and broker.password:
            found.add(broker.password)
        return sorted(found, key=len, reverse=True)   # a URL before the password inside it

    def fail_from_error(self, error, **result):
        """End the module with one fail_json for ``error`` (see failure()), its message and its traceback
        (the chain of causes, for -vvv) with every secret masked."""
        secrets = self.secrets()
        arguments = failure(error, **result)
        arguments['msg'] = redact_secrets(arguments['msg'], *secrets)
        arguments['exception'] = redact_secrets(
            ''.join(traceback.format_exception(type(error), error, error.__traceback__)), *secrets)
        self.fail_json(**arguments)

    @contextlib.contextmanager
    def fail_on_error(self, result):
        """Run the block; an OptionError or BrokerError from it ends the module with fail_from_error, keeping
        what ``result`` holds by then."""
        try:
            yield
        except BrokerError as error:
            self.fail_from_error(error, **result)
