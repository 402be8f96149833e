# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An interpreter that runs task after task (Mitogen for Ansible keeps one per host, with the module_utils imported
in it): a task must find nothing of the task before it (tests/integration/test_mitogen.py runs the modules so).

- a broker library that did not import for an earlier task (not installed yet) is imported once it is there;
- a broker URL, password and all, does not stay in urlsplit's cache once parsed.
"""

import gc
import os
import subprocess
import sys

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import parse_broker_url
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import check_management_url

# Runs in a fresh interpreter: the library is made unimportable (None in sys.modules), the module_utils are
# imported as an earlier task would have, then the library is "installed" (let through) for the next task.
LATER_INSTALL = r'''
import sys
sys.modules[%(library)r] = None
from ansible_collections.celeryops.fleet.plugins.module_utils import _module, %(connection)s as connection
from ansible_collections.celeryops.fleet.plugins.module_utils import _redis_queues
params = dict(broker_url=%(url)r)
missing = _module.missing_library(params)
assert missing is not None and missing[0] == %(library)r and 'halted' in missing[1], missing
del sys.modules[%(library)r]
assert _module.missing_library(params) is None, 'still missing once installed'
assert connection.%(flag)s and connection.%(error)s is None
%(check)s
print('ok')
'''

REDIS_CHECK = r'''
import redis
assert connection.redis is redis and connection.Retry is redis.retry.Retry
conn = connection.RedisConnection.__new__(connection.RedisConnection)

def changed():
    raise redis.WatchError('watched key changed')
try:
    conn.call(changed)
except _redis_queues.WatchError:
    pass   # what a filtered purge catches to try again
'''

PIKA_CHECK = r'''
import pika
assert connection.pika is pika and connection.pika_exceptions is pika.exceptions
'''


@pytest.mark.parametrize('library, connection, flag, error, url, check', [
    ('redis', '_redis_connection', 'HAS_REDIS', 'REDIS_IMPORT_ERROR', 'redis://127.0.0.1:6379/0', REDIS_CHECK),
    ('pika', '_amqp_connection', 'HAS_PIKA', 'PIKA_IMPORT_ERROR', 'amqp://127.0.0.1:5672//', PIKA_CHECK),
])
def test_a_library_installed_after_an_earlier_task_is_found(library, connection, flag, error, url, check):
    code = LATER_INSTALL % dict(library=library, connection=connection, flag=flag, error=error, url=url, check=check)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=False)
    assert out.stdout.strip() == 'ok', out.stdout + out.stderr


def _check_management_url(url):
    check_management_url(url)   # returns nothing: only the cache may keep the URL


@pytest.mark.parametrize('parse', [parse_broker_url, _check_management_url])
def test_a_parsed_url_leaves_its_password_nowhere(parse):
    password = 'persistent-pw-%s' % os.urandom(8).hex()
    url = ('redis://fleet:%s@127.0.0.1:6379/3' if parse is parse_broker_url else 'http://admin:%s@127.0.0.1:15672') % password
    parsed = parse(url)
    assert parsed is None or parsed.password == password
    del parsed, url
    gc.collect()
    holders = [type(obj).__name__ for obj in gc.get_objects()
               if isinstance(obj, tuple) and any(isinstance(item, str) and password in item for item in obj)]
    assert holders == []
