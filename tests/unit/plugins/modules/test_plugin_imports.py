"""The queue_depth lookup, the filters and the inventory must not pay for Celery or kombu: they import neither."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize('plugin', ['lookup.queue_depth', 'filter.celery', 'inventory.celery_workers'])
def test_plugins_import_no_celery_or_kombu(plugin):
    code = ("import sys; import ansible_collections.celeryops.fleet.plugins.%s; "
            "print(sorted(m for m in ('celery', 'kombu') if m in sys.modules))" % plugin)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]', out.stdout + out.stderr
