# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark helper (bench/ only, not part of the collection): the least a module can cost that
returns celery_queue_info's result. It does no broker work: it returns a result celery_queue_info
produced, read from a file, and with import_redis imports redis-py as the Redis queue modules must.
broker_url is taken and is no_log like the real module's, so exit_json scrubs the same way."""

from __future__ import annotations

DOCUMENTATION = r"""
module: bench_result_floor
short_description: Return a recorded celery_queue_info result, for bench/run
description: Returns the JSON object in O(result_file), optionally after importing redis-py.
options:
  result_file:
    description: A JSON file holding a celery_queue_info result.
    type: path
    required: true
  import_redis:
    description: Import redis-py first, as the Redis queue modules do.
    type: bool
    default: false
  broker_url:
    description: Not used; no_log as in celery_queue_info.
    type: str
author: celeryops.fleet contributors
"""

import json

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(result_file=dict(type='path', required=True),
                                              import_redis=dict(type='bool', default=False),
                                              broker_url=dict(type='str', no_log=True)),
                           supports_check_mode=True)
    if module.params['import_redis']:
        import redis  # noqa: F401 pylint: disable=unused-import
    with open(module.params['result_file']) as f:
        result = json.load(f)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
