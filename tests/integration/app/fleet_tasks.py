"""The Celery app the integration tests and the demo run workers of and publish to.

The broker comes from CELERY_BROKER_URL; FLEET_KEYPREFIX sets kombu's global_keyprefix, FLEET_SEP its sep.
Tasks are tiny and named for what they do.
"""

import os
import time

from celery import Celery


def make_app(broker_url, global_keyprefix=None, sep=None):
    app = Celery('fleet_tasks', broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=os.environ.get('FLEET_DEFAULT_QUEUE', 'fleet_default'),
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_queue_max_priority=10,
        broker_transport_options=dict((k, v) for k, v in (('global_keyprefix', global_keyprefix), ('sep', sep)) if v),
    )
    return app


app = make_app(os.environ.get('CELERY_BROKER_URL', 'redis://127.0.0.1:6379/15'), os.environ.get('FLEET_KEYPREFIX'),
               os.environ.get('FLEET_SEP'))


@app.task(name='fleet_tasks.add')
def add(x, y):
    return x + y


@app.task(name='fleet_tasks.sleep')
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name='fleet_tasks.mail')
def mail(to):
    return to


class FleetTaskError(Exception):
    """The known exception of fleet_tasks.fail, for tests that look for it in events."""


@app.task(name='fleet_tasks.fail')
def fail(reason):
    raise FleetTaskError(reason)


@app.task(name='fleet_tasks.flaky', bind=True, max_retries=5)
def flaky(self, failures):
    """Fails (and is retried at once) ``failures`` times, then succeeds."""
    if self.request.retries < failures:
        raise self.retry(exc=FleetTaskError('attempt %d' % self.request.retries), countdown=0)
    return self.request.retries


@app.task(name='fleet_tasks.record', bind=True)
def record(self, seconds=0):
    """Append this task's id to FLEET_RECORD_FILE once it has run (for ``seconds``): the no-loss tests check
    that every submitted task ran."""
    time.sleep(seconds)
    # One short O_APPEND write per task: lines from concurrent workers do not interleave.
    with open(os.environ['FLEET_RECORD_FILE'], 'a') as handle:
        handle.write(self.request.id + '\n')
    return self.request.id
