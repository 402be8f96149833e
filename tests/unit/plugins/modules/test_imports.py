"""A Redis check must not pay for Celery, kombu or the AMQP stack: no module imports them up front
(remote control speaks the pidbox protocol over redis-py or pika itself)."""

import os
import subprocess
import sys

import pytest

MODULES = ('celery_queue_info', 'celery_queue', 'celery_worker_info', 'celery_worker', 'celery_events_info')


@pytest.mark.parametrize('module', MODULES)
def test_modules_import_no_celery_kombu_or_pika(module):
    code = ("import sys; import ansible_collections.celeryops.fleet.plugins.modules.%s; "
            "print(sorted(m for m in ('celery', 'kombu', 'pika', 'ansible.module_utils.urls') if m in sys.modules))"
            % module)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]', out.stdout + out.stderr
