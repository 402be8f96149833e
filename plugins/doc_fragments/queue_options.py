# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):

    # The RabbitMQ management API of the queue modules (module_utils/_queues.py, queue_options_argument_spec);
    # kombu's Redis transport options are in celeryops.fleet.redis_transport.
    DOCUMENTATION = r"""
options:
  management_url:
    description:
      - RabbitMQ only. Base URL of the management HTTP API, used to discover queues and count unacknowledged
        messages.
      - Defaults to the broker's host on port 15672 (C(http://)), or 15671 (C(https://)) for C(amqps://).
      - Several URLs (a list, or separated by commas), such as the management API of each node of a cluster.
        A request goes to the one that answered last, then to the others in order, and fails only when none
        answers, saying why for each. Any node tells about every queue of the cluster.
      - When the API cannot be reached, ready messages and consumers still come from AMQP, unacknowledged counts
        are V(null), and the module says why.
    type: list
    elements: str
  management_user:
    description:
      - RabbitMQ only. User for the management API. Defaults to the broker user.
    type: str
  management_password:
    description:
      - RabbitMQ only. Password for the management API. Defaults to the broker password.
    type: str
  management_validate_certs:
    description:
      - RabbitMQ only. Whether to verify the management API's TLS certificate.
    type: bool
    default: true
"""
