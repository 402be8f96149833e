# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return a prediction of what would change without changing anything.
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) when in diff mode.
  action_group:
    description: Use C(group/celeryops.fleet.celery) in C(module_defaults) to set the broker once for all modules.
    support: full
    membership:
      - celeryops.fleet.celery
"""

    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This module never changes anything.
  diff_mode:
    support: N/A
    details:
      - This module never changes anything.
"""
