"""The pytest harness (tests/integration/harness.py) as a command, for what the integration targets do besides calling
the modules under test: both kinds of test prepare brokers, publish and start workers one way.

    harness_cli.py prepare REDIS_DB VHOST       empty the Redis database, make the vhost (for guest)
    harness_cli.py cleanup REDIS_DB VHOST       empty the Redis database, delete the vhost
    harness_cli.py publish URL QUEUE COUNT TASK [ARG...]
                                                send COUNT messages of TASK (numbers as arguments)
    harness_cli.py start QUEUE LOGDIR WORKERS   start a Celery worker of the test app (task events on) per
                                                {url, node, pidfile} of the JSON list WORKERS, in the background;
                                                write each pid to its pidfile; return once all are ready
    harness_cli.py stop WORKERS                 kill those workers, where a pid is still its worker's
"""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..')))

import harness  # noqa: E402  (tests/integration, found relative to this file)


def prepare(redis_db, vhost):
    harness.RedisBroker(int(redis_db)).client.flushdb()
    harness.RabbitBroker(vhost).create()


def cleanup(redis_db, vhost):
    harness.RedisBroker(int(redis_db)).client.flushdb()
    harness.RabbitBroker(vhost).delete()


def publish(url, queue, count, task, *args):
    harness.publish(url, task, queue, args=tuple(float(arg) for arg in args), count=int(count))
    harness.close_publishers()


def start(queue, logdir, workers):
    started = []
    for worker in json.loads(workers):
        started.append(harness.Worker(worker['url'], worker['node'], [queue], events=True, logdir=logdir))
        with open(worker['pidfile'], 'w') as handle:
            handle.write('%d\n' % started[-1].process.pid)
    for worker in started:  # they start side by side
        worker.wait_ready()


def stop(workers):
    for worker in json.loads(workers):
        try:
            with open(worker['pidfile']) as handle:
                pid = int(handle.read())
            with open('/proc/%d/cmdline' % pid, 'rb') as handle:
                argv = handle.read().split(b'\0')
        except (OSError, ValueError):
            continue  # never started, or gone (celery_worker state=stopped)
        if worker['node'].encode() in argv:  # the pid was not reused by another process
            os.killpg(pid, signal.SIGKILL)


COMMANDS = dict(prepare=prepare, cleanup=cleanup, publish=publish, start=start, stop=stop)

if __name__ == '__main__':
    COMMANDS[sys.argv[1]](*sys.argv[2:])
