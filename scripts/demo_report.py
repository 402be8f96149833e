"""Print what scripts/demo found: a table of queues, a table of workers, the purge preview, then the same facts
as compact JSON.

Reads the output of ``ansible-playbook scripts/demo.yml`` with the ansible.posix.json callback. When a task
failed, prints which one and its message instead, and exits 1.

    python scripts/demo_report.py --mode own|broker [--ansible-rc N] results.json
"""

import argparse
import datetime
import json
import sys

# Where each number of the queue table comes from, per transport.
SOURCES = {
    'redis': [
        'ready: the queue\'s lists in Redis, every priority step counted (celery_queue_info)',
        'unacked: Redis\'s "unacked" hash, messages delivered to a worker and not yet acknowledged (celery_queue_info)',
        'consumers: Redis cannot count them; these are the workers that answered and consume the queue '
        '(their active_queues, celery_worker_info)',
    ],
    'amqp': [
        'ready and consumers: RabbitMQ, by a passive queue.declare (celery_queue_info)',
        'unacked: the RabbitMQ management API, whose statistics lag a few seconds (celery_queue_info)',
    ],
}


def endpoint(broker):
    """``redis 127.0.0.1:6379 db 0`` / ``amqp 127.0.0.1:5672 vhost /``, as the modules name a broker."""
    scheme = broker.get('transport', '?') + ('s' if broker.get('tls') else '')
    where = '%s:%s' % (broker.get('host'), broker.get('port'))
    if broker.get('transport') == 'redis':
        return '%s %s db %s' % (scheme, where, broker.get('db'))
    return '%s %s vhost %s' % (scheme, where, broker.get('vhost'))


def shown(value):
    return '?' if value is None else str(value)


def table(header, rows, indent='  '):
    """Rows of strings as aligned columns; numbers (strings of digits or '?') are right-aligned."""
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    numeric = [all(str(row[i]).isdigit() or row[i] in ('?', '-') for row in rows) and rows for i in range(len(header))]
    lines = []
    for row in [header] + rows:
        cells = [str(cell).rjust(width) if right else str(cell).ljust(width)
                 for cell, width, right in zip(row, widths, numeric)]
        lines.append((indent + '  '.join(cells)).rstrip())
    return lines


def short_id(task_id):
    return (task_id or '?')[:8]


def load(path, ansible_rc):
    """The facts of the last task, or None after printing what failed."""
    try:
        with open(path) as handle:
            output = json.load(handle)
    except (OSError, ValueError) as error:
        print('scripts/demo: no results from ansible-playbook (rc %s): %s' % (ansible_rc, error), file=sys.stderr)
        return None, None
    facts = finished = None
    warnings = []
    for play in output.get('plays', []):
        for task in play.get('tasks', []):
            result = task.get('hosts', {}).get('localhost', {})
            for warning in result.get('warnings') or []:
                text = warning if isinstance(warning, str) else json.dumps(warning)
                # The purge preview's table shows these (the unacked column).
                if 'held unacknowledged by workers' not in text and text not in warnings:
                    warnings.append(text)
            if result.get('failed') or result.get('unreachable'):
                print('scripts/demo: the task "%s" failed: %s' % (task['task']['name'], result.get('msg', result)),
                      file=sys.stderr)
                return None, None
            if 'msg' in result and isinstance(result['msg'], dict) and 'workers' in result['msg']:
                facts = result['msg']
            if task['task']['name'].startswith('Ask the workers'):
                finished = task['task']['duration']['end']
    if facts is None or ansible_rc:
        print('scripts/demo: ansible-playbook ended with rc %s before the facts were shown' % ansible_rc, file=sys.stderr)
        return None, None
    facts['warnings'] = warnings
    return facts, finished


def consumers_by_queue(workers):
    counts = {}
    for node in workers.get('workers', {}).values():
        for queue in node.get('queues', []):
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def queue_section(facts, where, transport):
    queues = facts['queues']['queues']
    lines = ['', 'QUEUES on %s' % where]
    if not queues:
        lines.append('  no Celery queues found on %s' % where)
        return lines, []
    from_workers = consumers_by_queue(facts['workers'])
    with_priorities = any(q.get('priorities') for q in queues)
    with_tasks = any('tasks' in q for q in queues)
    header = ['queue', 'ready', 'unacked', 'consumers'] + (['by priority step'] if with_priorities else []) \
        + (['backlog by task'] if with_tasks else [])
    rows, out = [], []
    for queue in queues:
        consumers = queue['consumers'] if transport == 'amqp' else from_workers.get(queue['name'], 0)
        row = [queue['name'], shown(queue['messages']), shown(queue.get('unacked')), shown(consumers)]
        if with_priorities:
            row.append(' '.join('%s:%s' % (step, n) for step, n in sorted((queue.get('priorities') or {}).items(),
                                                                          key=lambda item: int(item[0])) if n) or '-')
        if with_tasks:
            row.append(', '.join('%s %d' % item for item in sorted(queue.get('tasks', {}).items())) or '-')
        rows.append(row)
        fact = {'name': queue['name'], 'ready': queue['messages'], 'unacked': queue.get('unacked'), 'consumers': consumers}
        fact.update((key, queue[key]) for key in ('priorities', 'tasks') if queue.get(key) is not None)
        out.append(fact)
    lines += table(header, rows)
    lines += ['  ' + source for source in SOURCES.get(transport, [])]
    if facts['queues'].get('management_error'):
        lines.append('  the management API could not be used: %s' % facts['queues']['management_error'])
    for queue in queues:
        if queue.get('peek'):
            lines.append('  next in %s: %s' % (queue['name'], ', '.join(
                '%s[%s]' % (m.get('task') or '<not a Celery task>', short_id(m.get('id'))) for m in queue['peek'])))
    return lines, out


def worker_section(facts, now, own):
    workers = facts['workers']
    lines = ['', 'WORKERS']
    out = []
    if not workers['count']:
        lines.append('  no worker answered the ping within 2 s (celery_worker_info sends it to every worker on the broker)')
    rows = []
    for node, state in sorted(workers.get('workers', {}).items()):
        active = state.get('active') or []
        reserved = state.get('reserved') or []
        started = [task for task in active if task.get('time_start')]
        longest = min(started, key=lambda task: task['time_start']) if started else None
        longest_text, longest_fact = '-', None
        if longest:
            seconds = max(0.0, now - longest['time_start'])
            longest_text = '%s[%s] for %.1f s' % (longest.get('name'), short_id(longest.get('id')), seconds)
            longest_fact = {'task': longest.get('name'), 'id': longest.get('id'), 'seconds': round(seconds, 1)}
        queues = state.get('queues', [])
        rows.append([node, ','.join(queues) or '-', str(len(active)), str(len(reserved)), longest_text])
        out.append({'node': node, 'queues': queues, 'active': len(active), 'reserved': len(reserved),
                    'running_longest': longest_fact})
    if rows:
        lines += table(['node', 'queues', 'active', 'reserved', 'running longest'], rows)
        lines.append('  from celery_worker_info: active_queues, active (running) and reserved (prefetched, waiting to run)'
                     + ('' if own else '; %d answered the ping within 2 s' % workers['count']))
    for what in ('missing', 'unexpected', 'duplicates'):
        if workers.get(what):
            lines.append('  %s: %s' % (what, ', '.join(workers[what])))
    return lines, out


def purge_section(facts, own):
    purge = facts['purge']
    lines = ['', 'PURGE PREVIEW (celery_queue in check mode: it reports what a purge WOULD remove; nothing was removed)']
    if purge.get('skipped'):
        lines.append('  nothing to preview: no queues')
        return lines, []
    rows, out = [], []
    for queue in purge['queues']:
        rows.append([queue['name'], str(queue['removed']), shown(queue.get('unacked'))])
        out.append({'name': queue['name'], 'would_remove': queue['removed'], 'unacked_kept': queue.get('unacked')})
    lines += table(['queue', 'would remove', 'unacked (a purge never removes them)'], rows)
    if not own:
        names = [queue['name'] for queue in purge['queues']]
        lines.append("  to purge for real: ansible-playbook celeryops.fleet.purge -e '%s'"
                     % json.dumps({'purge_queues': names, 'purge_confirm': True}))
    return lines, out


def not_done(own, transport, where):
    if own:
        return ['Nothing was purged: the purge above is a preview. The demo\'s Redis and workers are removed now.']
    done = ['Read only: no task was published, consumed or purged on %s, and no worker was started or stopped; '
            'the purge above is a preview (check mode).' % where,
            'What it did send: a ping to every worker through Celery\'s remote control, as `celery inspect ping` does'
            + (' (on RabbitMQ that declares Celery\'s control exchanges where they are missing).' if transport == 'amqp' else '.')]
    if transport != 'redis':
        done.append('Messages were not read (no next messages, no backlog by task): on RabbitMQ a message read '
                    'comes back marked redelivered.')
    return done


def compact_json(facts):
    """Top-level keys one per line, each queue/worker/purge entry on one line."""
    parts = []
    for key, value in facts.items():
        if isinstance(value, list) and value:
            items = ',\n'.join('    ' + json.dumps(item, sort_keys=False) for item in value)
            parts.append('  %s: [\n%s\n  ]' % (json.dumps(key), items))
        else:
            parts.append('  %s: %s' % (json.dumps(key), json.dumps(value)))
    return '{\n' + ',\n'.join(parts) + '\n}'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mode', choices=('own', 'broker'), required=True)
    parser.add_argument('--ansible-rc', type=int, default=0)
    parser.add_argument('results')
    args = parser.parse_args(argv)
    facts, finished = load(args.results, args.ansible_rc)
    if facts is None:
        return 1
    own = args.mode == 'own'
    broker = facts['queues']['broker']
    transport = broker.get('transport')
    where = endpoint(broker)
    now = datetime.datetime.fromisoformat(finished.replace('Z', '+00:00')).timestamp() if finished else 0
    what = 'the demo\'s throwaway Redis and its two workers' if own else 'CELERY_BROKER_URL, read only'
    lines = ['', 'celeryops.fleet on %s (%s)' % (where, what)]
    queue_lines, queues = queue_section(facts, where, transport)
    worker_lines, workers = worker_section(facts, now, own)
    purge_lines, purge = purge_section(facts, own)
    lines += queue_lines + worker_lines + purge_lines + [''] + not_done(own, transport, where)
    if facts['warnings']:
        lines += ['', 'THE MODULES WARNED'] + ['  %s' % text for text in facts['warnings']]
    summary = {'broker': where, 'queues': queues, 'workers': workers,
               'workers_missing': facts['workers'].get('missing', []), 'purge_preview': purge}
    lines += ['', 'THE SAME FACTS AS JSON', compact_json(summary)]
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
