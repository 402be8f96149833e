# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):

    # Waiting for a condition (module_utils/_wait.py).
    DOCUMENTATION = r"""
options:
  wait:
    description:
      - Whether to poll until the condition holds, instead of checking it once.
    type: bool
    default: false
  wait_timeout:
    description:
      - Seconds to wait when O(wait=true). The module fails when the time runs out, naming what did not
        reach the condition and the last value seen.
      - If the broker goes away while the module waits (a restart, a lost connection, or silence for
        O(connect_timeout)), the module reconnects every O(wait_sleep) seconds within the same O(wait_timeout),
        and fails saying that the broker went away if it is not back in time.
    type: float
    default: 120.0
  wait_sleep:
    description:
      - Seconds between two polls when O(wait=true).
    type: float
    default: 1.0
"""
