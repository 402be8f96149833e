# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):

    # kombu's Redis transport options, taken by every module and plugin that talks to a broker
    # (module_utils/_queues.py, redis_transport_argument_spec and redis_layout).
    DOCUMENTATION = r"""
options:
  global_keyprefix:
    description:
      - Redis only. kombu's C(global_keyprefix) transport option, prepended to every key (and, for remote control
        and events, to the channels workers publish on).
      - Must match the C(broker_transport_options) of the Celery app.
    type: str
    default: ''
  sep:
    description:
      - Redis only. kombu's C(sep) transport option. It separates a queue name from its priority step, and the fields
        of kombu's binding sets (C(_kombu.binding.*)), through which workers find the queue to send a reply to.
      - Must match the C(broker_transport_options) of the Celery app. Workers cannot read a binding written with
        another separator, and then answer nobody, not even another client's C(celery inspect).
      - Must not be empty.
    type: str
    default: "\x06\x16"
  priority_steps:
    description:
      - Redis only. kombu's C(priority_steps) transport option. A queue is one list per step; step 0 is the bare
        queue name, step N is the queue name followed by O(sep) and N.
      - Must match the C(broker_transport_options) of the Celery app. Numbers from 0 to 255, at least one.
    type: list
    elements: int
    default: [0, 3, 6, 9]
"""
