"""3. celery_queue purging one big queue vs `celery -A fleet_tasks purge -f -Q <queue>`.

Redis: 100,000 messages (BENCH_QUICK: 20,000), 90 % on the bare key and 10 % on priority
step 3, kombu's bindings. RabbitMQ: 20,000 (BENCH_QUICK: 5,000; BENCH_AMQP_PURGE), queue
declared with Celery's arguments: this RabbitMQ takes persistent messages in at only ~6-7k/s
on 2 cores, so 100,000 would cost ~17 s per refill, 10 refills a run. The queue is filled again before every run (not timed);
the two tools take turns.
"""

import os
import random
import sys
import time

import lib

REDIS_N = int(os.environ.get('BENCH_REDIS_PURGE') or (20000 if lib.QUICK else 100000))
AMQP_N = int(os.environ.get('BENCH_AMQP_PURGE') or (5000 if lib.QUICK else 20000))
QUEUE = 'bench.purge'


def celery_argv():
    return [os.path.join(os.path.dirname(sys.executable), 'celery'), '-A', 'fleet_tasks', 'purge', '-f', '-Q', QUEUE]


def celery_command(url):
    return 'cd tests/integration/app && CELERY_BROKER_URL=%s celery -A fleet_tasks purge -f -Q %s' % (url, QUEUE)


def bench_redis():
    lib.reset_redis()
    client = lib.redis_client()
    envelopes = lib.Envelopes()
    results = dict(celery_queue=dict(wall=[], task=[], fill=[]), celery_purge=dict(wall=[], fill=[]))
    for round_ in range(lib.REPEAT):
        for name in ('celery_queue', 'celery_purge'):
            start = time.perf_counter()
            client.delete(*[lib.key_of(QUEUE, s) for s in (0, 3, 6, 9)])
            lib.fill_backlog(client, envelopes, QUEUE, REDIS_N, seed=round_)
            results[name]['fill'].append(time.perf_counter() - start)
            if name == 'celery_queue':
                wall, task = lib.run_playbook('queue_purge.yml', {'broker_url': lib.REDIS_URL, 'queues': [QUEUE]})
                if task['summary'].get('removed') != REDIS_N:
                    raise AssertionError('celery_queue removed %r' % task['summary'])
                results[name]['task'].append(task['seconds'])
            else:
                wall, out = lib.timed(celery_argv(), env={'CELERY_BROKER_URL': lib.REDIS_URL}, cwd=lib.APP_DIR)
                if ('Purged %d messages' % REDIS_N).encode() not in out:
                    raise AssertionError('celery purge said %r' % out)
            left = sum(client.llen(lib.key_of(QUEUE, s)) for s in (0, 3, 6, 9))
            if left:
                raise AssertionError('%s left %d messages' % (name, left))
            results[name]['wall'].append(wall)
        lib.log('redis round %d/%d: %s' % (round_ + 1, lib.REPEAT, ', '.join(
            '%s %.2fs' % (k, v['wall'][-1]) for k, v in results.items())))
    lib.reset_redis()
    return results


def bench_amqp():
    envelopes = lib.AmqpEnvelopes()
    rnd = random.Random(3)
    results = dict(celery_queue=dict(wall=[], task=[], fill=[]), celery_purge=dict(wall=[], fill=[]))
    connection = lib.amqp_connection()
    channel = connection.channel()
    envelopes.declare(channel, QUEUE)
    try:
        for round_ in range(lib.REPEAT):
            for name in ('celery_queue', 'celery_purge'):
                start = time.perf_counter()
                channel.queue_purge(QUEUE)
                envelopes.fill(connection, channel, QUEUE, AMQP_N, rnd)
                lib.wait_ready(QUEUE, AMQP_N)
                results[name]['fill'].append(time.perf_counter() - start)
                if name == 'celery_queue':
                    wall, task = lib.run_playbook('queue_purge.yml', {'broker_url': lib.AMQP_URL, 'queues': [QUEUE]})
                    if task['summary'].get('removed') != AMQP_N:
                        raise AssertionError('celery_queue removed %r' % task['summary'])
                    results[name]['task'].append(task['seconds'])
                else:
                    wall, out = lib.timed(celery_argv(), env={'CELERY_BROKER_URL': lib.AMQP_URL}, cwd=lib.APP_DIR)
                    if ('Purged %d messages' % AMQP_N).encode() not in out:
                        raise AssertionError('celery purge said %r' % out)
                left = channel.queue_declare(QUEUE, passive=True).method.message_count
                if left:
                    raise AssertionError('%s left %d messages' % (name, left))
                results[name]['wall'].append(wall)
            lib.log('amqp round %d/%d: %s' % (round_ + 1, lib.REPEAT, ', '.join(
                '%s %.2fs (fill %.1fs)' % (k, v['wall'][-1], v['fill'][-1]) for k, v in results.items())))
        channel.queue_delete(QUEUE)
    finally:
        connection.close()
    return results


def shape(results, url):
    out = {}
    for name, data in results.items():
        entry = dict(wall=lib.summary(data['wall']), fill=lib.summary(data['fill']))
        if data.get('task'):
            entry['task'] = lib.summary(data['task'])
        out[name] = entry
    out['celery_queue']['command'] = lib.playbook_command('queue_purge.yml', {'broker_url': url, 'queues': [QUEUE]})
    out['celery_purge']['command'] = celery_command(url)
    return out


def main():
    out = dict(queue=QUEUE, redis_n=REDIS_N, amqp_n=AMQP_N)
    out['redis'] = shape(bench_redis(), lib.REDIS_URL)
    if os.environ.get('BENCH_SKIP_AMQP_PURGE') != '1':
        out['amqp'] = shape(bench_amqp(), lib.AMQP_URL)
    lib.write_result('purge', out)


if __name__ == '__main__':
    main()
