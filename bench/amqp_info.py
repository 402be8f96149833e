"""2. celery_queue_info over N RabbitMQ queues vs rabbitmqctl list_queues vs one management API call.

N queues (200; BENCH_QUICK: 50) declared as Celery declares them (arguments copied from a queue
Celery itself declared), 3 messages each, copies of messages Celery published. The module
discovers the queues through the management API, then declares each passively.
"""

import os
import random
import time

import lib

N_QUEUES = int(os.environ.get('BENCH_AMQP_QUEUES') or (50 if lib.QUICK else 200))
PER_QUEUE = 3


def populate():
    envelopes = lib.AmqpEnvelopes()
    rnd = random.Random(11)
    names = ['bench.q%03d' % i for i in range(N_QUEUES)]
    connection = lib.amqp_connection()
    try:
        channel = connection.channel()
        for name in names:
            envelopes.declare(channel, name)
            for _i in range(PER_QUEUE):
                envelopes.publish(channel, name, envelopes.task_for(rnd))
    finally:
        connection.close()
    # Wait until the management statistics (which lag) show every message, so all three agree.
    deadline = time.monotonic() + 60
    while True:
        records = lib.management('GET', '/api/queues/%s?columns=name,messages' % lib.QVHOST)
        if sum(r.get('messages') or 0 for r in records) == N_QUEUES * PER_QUEUE:
            break
        if time.monotonic() > deadline:
            raise RuntimeError('the management API never showed the %d messages' % (N_QUEUES * PER_QUEUE))
        time.sleep(0.5)
    return names, envelopes.queue_arguments


def main():
    names, arguments = populate()
    ready = N_QUEUES * PER_QUEUE
    rabbitmqctl = ['rabbitmqctl', 'list_queues', 'name', 'messages', 'messages_ready', 'messages_unacknowledged',
                   'consumers', '-p', lib.VHOST]
    api = '%s/api/queues/%s?columns=name,messages,messages_ready,messages_unacknowledged,consumers' % (
        lib.MANAGEMENT, lib.QVHOST)
    curl = ['curl', '-sf', '-u', 'guest:guest', api]
    results = dict((k, dict(wall=[], task=[])) for k in ('queue_info', 'rabbitmqctl', 'curl', 'module_utils'))
    params = lib.module_params(lib.AMQP_URL)

    for round_ in range(lib.REPEAT):
        wall, task = lib.run_playbook('queue_info.yml', {'broker_url': lib.AMQP_URL})
        got = task['summary']
        if (got['queues'], got['messages']) != (N_QUEUES, ready):
            raise AssertionError('celery_queue_info saw %r, expected %d queues and %d messages'
                                 % (got, N_QUEUES, ready))
        results['queue_info']['wall'].append(wall)
        results['queue_info']['task'].append(task['seconds'])

        seconds, out = lib.timed(rabbitmqctl)
        lines = [line for line in out.decode().splitlines() if line.startswith('bench.q')]
        if len(lines) != N_QUEUES:
            raise AssertionError('rabbitmqctl listed %d queues' % len(lines))
        results['rabbitmqctl']['wall'].append(seconds)

        seconds, out = lib.timed(curl)
        if out.count(b'"name"') != N_QUEUES:
            raise AssertionError('the management API listed %d queues' % out.count(b'"name"'))
        results['curl']['wall'].append(seconds)

        seconds, states = lib.describe_in_process(params)
        results['module_utils']['wall'].append(seconds)
        if len(states) != N_QUEUES:
            raise AssertionError('module_utils saw %d queues' % len(states))
        lib.log('round %d/%d: %s' % (round_ + 1, lib.REPEAT, ', '.join(
            '%s %.2fs' % (k, v['wall'][-1]) for k, v in results.items())))

    out = dict(n_queues=N_QUEUES, ready=ready, queue_arguments=arguments, variants={})
    for name, data in results.items():
        entry = dict(wall=lib.summary(data['wall']))
        if data['task']:
            entry['task'] = lib.summary(data['task'])
        out['variants'][name] = entry
    out['variants']['queue_info']['command'] = lib.playbook_command('queue_info.yml', {'broker_url': lib.AMQP_URL})
    out['variants']['rabbitmqctl']['command'] = lib.show(rabbitmqctl)
    out['variants']['curl']['command'] = lib.show(curl)
    out['variants']['module_utils']['command'] = ('in process (bench/amqp_info.py): open_queues(); '
                                                  'queue_states(queues) (lib.describe_in_process)')
    lib.write_result('amqp_info', out)
    connection = lib.amqp_connection()
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        connection.close()


if __name__ == '__main__':
    main()
