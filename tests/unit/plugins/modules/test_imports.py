"""What a plugin imports costs every task that loads it, so each imports only what it needs:

- a module must not pay for Celery, kombu or the AMQP stack up front (a Redis check imports no pika; remote control
  speaks the pidbox protocol over redis-py or pika itself), nor for ansible.module_utils.urls (the management API is
  called with the standard library);
- the queue_depth lookup, the filters and the inventory import neither Celery nor kombu.

Each import runs in a fresh interpreter, so that nothing imported by another test counts.
"""

import os
import subprocess
import sys

import pytest

MODULES = ('celery_queue_info', 'celery_queue', 'celery_worker_info', 'celery_worker', 'celery_events_info', 'celery_task_info',
           'celery_task', 'celery_broker')
MODULE_MUST_NOT_IMPORT = ('celery', 'kombu', 'pika', 'ansible.module_utils.urls')

PLUGINS = ('lookup.queue_depth', 'filter.celery', 'inventory.celery_workers')
PLUGIN_MUST_NOT_IMPORT = ('celery', 'kombu')

CASES = ([('modules.' + module, MODULE_MUST_NOT_IMPORT) for module in MODULES]
         + [(plugin, PLUGIN_MUST_NOT_IMPORT) for plugin in PLUGINS])


@pytest.mark.parametrize('plugin, must_not_import', CASES, ids=[plugin for plugin, _unused in CASES])
def test_plugin_imports_none_of(plugin, must_not_import):
    code = ("import sys; import ansible_collections.celeryops.fleet.plugins.%s; "
            "print(sorted(m for m in %r if m in sys.modules))" % (plugin, must_not_import))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]', out.stdout + out.stderr
