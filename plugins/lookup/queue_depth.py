# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: queue_depth
short_description: Ready messages in Celery queues
version_added: 0.1.0
description:
  - For each queue name, the number of messages waiting in it (ready, not yet taken by a worker), read from the broker
    on the controller.
  - On Redis, every priority sub-queue counts; on RabbitMQ the count comes from a passive declare (real time).
    A queue that does not exist has 0.
  - The same reads as RV(celeryops.fleet.celery_queue_info#module:queues[].messages), whose module tells more
    (unacked messages, consumers, waiting for thresholds).
extends_documentation_fragment:
  - celeryops.fleet.broker
  - celeryops.fleet.redis_transport
  - celeryops.fleet.queue_options
options:
  _terms:
    description: Queue names.
    type: list
    elements: str
    required: true
  broker_url:
    description:
      - The Celery broker URL, as in C(CELERY_BROKER_URL) or Celery's C(broker_url) setting, such as
        C(redis://host:6379/0) or C(amqp://user@host:5672/vhost). kombu's C(amqp://host:5672//) form for the default
        vhost is accepted.
    type: str
    env:
      - name: CELERY_BROKER_URL
notes:
  - The lookup runs on the controller, which must reach the broker.
"""

EXAMPLES = r"""
- name: Ready messages in two queues
  ansible.builtin.debug:
    msg: "{{ lookup('celeryops.fleet.queue_depth', 'default', 'reports', broker_url='redis://127.0.0.1:6379/0') }}"

- name: Wait until the default queue is empty
  ansible.builtin.debug:
    msg: "{{ query('celeryops.fleet.queue_depth', 'default') | first }} messages left"
  retries: 30
  delay: 10
  until: query('celeryops.fleet.queue_depth', 'default') | first == 0
"""

RETURN = r"""
_raw:
  description: Ready messages per queue, in the order of the names.
  type: list
  elements: int
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, OptionError
from ansible_collections.celeryops.fleet.plugins.module_utils._module import missing_library
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import check_queue_names, open_queues, queue_states

OPTIONS = ('broker_url', 'broker_password', 'connect_timeout', 'tls_ca_file', 'tls_cert_file', 'tls_key_file',
           'tls_verify', 'global_keyprefix', 'priority_steps', 'sep', 'management_url', 'management_user',
           'management_password', 'management_validate_certs', 'master_name', 'sentinel_password')


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        params = dict((name, self.get_option(name)) for name in OPTIONS)
        names = [str(term) for term in terms]
        missing = missing_library(params)
        if missing:
            raise AnsibleLookupError('queue_depth needs the %s Python library on the controller' % missing[0])
        try:
            check_queue_names(names, option='queue names')
            if not names:
                raise OptionError('name at least one queue')
            queues = open_queues(params)
            try:
                states = queue_states(queues, names)
            finally:
                queues.close()
        except BrokerError as error:
            raise AnsibleLookupError('queue_depth: %s' % error.msg)
        return [state['messages'] for state in states]
