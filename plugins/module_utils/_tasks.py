# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finding Celery tasks wherever they are, and revoking them: celery_task_info's and celery_task's logic.

A task is in one of these places: a ready message in a queue (``queued``), prefetched by a worker
(``reserved``), waiting for its ETA on a worker (``scheduled``), running (``active``), or, on Redis, a
message held in kombu's ``unacked`` hash by a worker that does not report it (``unacked``: offline,
killed, or not answering; kombu restores it to its queue after the visibility timeout). Workers also
keep the ids they were told to revoke (``revoked``), in memory only unless started with --statedb.

One broadcast asks every worker for active, reserved, scheduled, revoked, active_queues and stats at
once (``Snapshot``); each named queue is read once (every priority step on Redis; on RabbitMQ received
and requeued, as celery_queue's filtered purge does); on Redis the unacked hash is read once.

Selection (``Selector``): every selector given must hold. Arguments are compared as the JSON body
decodes them (``_messages.task_arguments``), or as argsrepr/kwargsrepr read back as Python literals
when the body is not JSON. Nothing is ever unpickled.

Private to celeryops.fleet; the API may change between releases.
"""

from __future__ import annotations

import json
import re
import signal as signals
import time

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import (
    BrokerError, OptionError, check_seconds, parse_broker_url)
from ansible_collections.celeryops.fleet.plugins.module_utils._control import (
    Control, Expectation, check_node_names)
from ansible_collections.celeryops.fleet.plugins.module_utils._messages import (
    NotAnEnvelope, describe_message, load_envelope, loads, task_arguments, undecodable)
from ansible_collections.celeryops.fleet.plugins.module_utils._queues import (
    check_queue_names, queue_states, redis_layout, refuse_unsafe)
from ansible_collections.celeryops.fleet.plugins.module_utils._wait import wait_in_result, wait_until

# What one broadcast asks every worker.
SNAPSHOT = {'ping': {}, 'stats': {}, 'active': {}, 'reserved': {}, 'scheduled': {}, 'revoked': {},
            'active_queues': {}}
WHERE = ('active', 'scheduled', 'reserved', 'unacked', 'queued', 'revoked')
# Pools whose terminate_job stops a running task (celery/concurrency/*.py); threads and solo cannot.
TERMINATING_POOLS = ('prefork', 'eventlet', 'gevent')
# The result backend key of a task (celery/backends/base.py, KeyValueStoreBackend.task_keyprefix).
RESULT_KEY = 'celery-task-meta-'
# A worker's time_start below this is not a Unix time (a worker clock we cannot compare with).
_EPOCH_2001 = 1e9
# An id or task name made of these characters only is written into JSON as it is (kombu writes a Redis message
# with json.dumps), so a message whose raw text lacks it cannot carry it: see Selector.may_match_raw.
_JSON_AS_IS = re.compile(r'^[A-Za-z0-9_.:@=+-]+$')


def selector_argument_spec():
    """The options shared by celery_task_info and celery_task."""
    return dict(
        ids=dict(type='list', elements='str'),
        task_names=dict(type='list', elements='str'),
        args_contains=dict(type='list', elements='raw'),
        kwargs_contains=dict(type='dict'),
        older_than=dict(type='float'),
        queues=dict(type='list', elements='str'),
        expected_nodes=dict(type='list', elements='str'),
        expected_count=dict(type='int'),
        timeout=dict(type='float', default=1.0),
    )


SELECTORS = ('ids', 'task_names', 'args_contains', 'kwargs_contains', 'older_than')


def check_selectors(params, required=False, extra=()):
    """What the argument spec cannot say about the shared options; raises OptionError.

    An empty list or dict is refused: an empty variable must never widen a selection (with ``required``,
    to every task)."""
    for option in ('ids', 'task_names', 'args_contains', 'kwargs_contains', 'queues', 'expected_nodes') + tuple(extra):
        if params.get(option) is not None and len(params[option]) == 0:
            raise OptionError('%s is empty: it selects nothing; omit it or give at least one value' % option,
                              option=option)
    check_queue_names(params['queues'])
    check_queue_names(params['ids'], option='ids', what='task id')
    check_queue_names(params['task_names'], option='task_names', what='task')
    check_node_names(params['expected_nodes'], 'expected_nodes')
    for key in params['kwargs_contains'] or {}:
        if not key:
            raise OptionError('kwargs_contains: a keyword name is empty', option='kwargs_contains')
    if params['older_than'] is not None and not 0 <= params['older_than'] < float('inf'):
        raise OptionError('older_than must be 0 or more seconds, got %s' % params['older_than'], option='older_than')
    if params['expected_count'] is not None and params['expected_count'] < 0:
        raise OptionError('expected_count must be 0 or more, got %d' % params['expected_count'], option='expected_count')
    check_seconds(params['timeout'], 'timeout')
    if required and not any(params.get(option) is not None for option in SELECTORS + tuple(extra)):
        raise OptionError('no task selected: give %s (there is no "every task")' % ', '.join(SELECTORS + tuple(extra)),
                          option='ids')


def _plain(value):
    """JSON-shaped: tuples as lists (argsrepr reads back tuples), recursively."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return dict((k, _plain(v)) for k, v in value.items())
    return value


def _same(a, b):
    """Equal as JSON values: True is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b if not isinstance(a, (list, dict)) else json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class Selector(object):
    """Which tasks the options select; every selector given must hold."""

    def __init__(self, params, stamps=None):
        self.ids = set(params['ids']) if params['ids'] is not None else None
        self.names = set(params['task_names']) if params['task_names'] is not None else None
        self.args = _plain(params['args_contains']) if params['args_contains'] is not None else None
        self.kwargs = _plain(params['kwargs_contains']) if params['kwargs_contains'] is not None else None
        self.older_than = params['older_than']
        # header -> accepted values (celery_task's stamped_headers)
        self.stamps = dict((h, set(v if isinstance(v, list) else [v])) for h, v in (stamps or {}).items()) or None
        # For may_match_raw: per selector of ids or names, its values as bytes, when each is written as it is.
        self._raw_needles = [[value.encode('ascii') for value in values] for values in (self.ids, self.names)
                             if values is not None and all(_JSON_AS_IS.match(value) for value in values)]

    def may_match_raw(self, raw):
        """False when a Redis message's raw JSON (bytes) holds none of the ids, or none of the task names, selected:
        it cannot match, and is not decoded (a lookup by id in 10,000 messages decodes one, not 10,000). Only for
        messages of Celery's protocol 2, whose headers hold the id and the task name as they are; protocol 1 has them
        inside its encoded body, so such a message always may match."""
        if not isinstance(raw, (bytes, bytearray)) or (b'"task": "' not in raw and b'"task":"' not in raw):
            return True
        return all(any(needle in raw for needle in needles) for needles in self._raw_needles)

    @property
    def needs_arguments(self):
        return self.args is not None or self.kwargs is not None

    def matches(self, view):
        """``view``: a dict with id, task, args, kwargs, runtime (None unless active) and stamps."""
        if self.ids is not None and view.get('id') not in self.ids:
            return False
        if self.names is not None and view.get('task') not in self.names:
            return False
        if self.older_than is not None and (view.get('runtime') is None or view['runtime'] < self.older_than):
            return False
        if self.args is not None:
            args = view.get('args')
            if not isinstance(args, list) or not all(any(_same(want, have) for have in args) for want in self.args):
                return False
        if self.kwargs is not None:
            kwargs = view.get('kwargs')
            if not isinstance(kwargs, dict) or not all(
                    key in kwargs and _same(want, kwargs[key]) for key, want in self.kwargs.items()):
                return False
        if self.stamps is not None:
            stamps = view.get('stamps')
            if stamps is None:
                return False
            for header, wanted in self.stamps.items():
                have = stamps.get(header)
                have = have if isinstance(have, list) else [have]
                if not any(isinstance(v, str) and v in wanted for v in have):
                    return False
        return True

    def id_only(self):
        """Whether only ids select (then an id a worker only lists as revoked is a match too)."""
        return self.ids is not None and self.names is None and not self.needs_arguments \
            and self.older_than is None and self.stamps is None


# -- views of messages ------------------------------------------------------------------------------

def message_describer(selector):
    """describe(headers, properties, envelope) for a queue read: describe_message's view, with the task's
    decoded args and kwargs when the selector compares them, and the stamps it looks for."""
    def describe(headers, properties, envelope):
        view = describe_message(headers, properties, envelope)
        if selector.needs_arguments and view['task'] is not None:
            view['args'], view['kwargs'] = task_arguments(headers, envelope)
        if selector.stamps is not None and isinstance(headers, dict):
            # Celery 5.3+ keeps a message's stamps in its 'stamps' header (a dict), named in 'stamped_headers'.
            stamps = headers.get('stamps') if isinstance(headers.get('stamps'), dict) else {}
            view['stamps'] = dict((h, _plain(stamps.get(h))) for h in selector.stamps)
        return view
    return describe


def redis_view(raw, describe):
    """The view of a Redis list element (or an unacked entry's message dict); never raises."""
    try:
        envelope = load_envelope(raw)
    except NotAnEnvelope as exc:
        return undecodable(exc)
    return describe(envelope.get('headers'), envelope.get('properties'), envelope)


def _runtime(info, now):
    start = info.get('time_start')
    if isinstance(start, (int, float)) and not isinstance(start, bool) and start > _EPOCH_2001:
        return round(max(0.0, now - start), 3)
    return None


def worker_view(info, now, active=False):
    """The view of a task a worker reports (Request.info()): args and kwargs as the worker sent them (a
    repr string read back as a literal), runtime for an active one."""
    args, kwargs = info.get('args'), info.get('kwargs')
    if isinstance(args, str) or isinstance(kwargs, str):
        args, kwargs = task_arguments({'argsrepr': args if isinstance(args, str) else None,
                                       'kwargsrepr': kwargs if isinstance(kwargs, str) else None})
    delivery = info.get('delivery_info') if isinstance(info.get('delivery_info'), dict) else {}
    pid = info.get('worker_pid')
    return dict(id=info.get('id') if isinstance(info.get('id'), str) else None,
                task=info.get('name') if isinstance(info.get('name'), str) else None,
                args=args if isinstance(args, list) else None, kwargs=kwargs if isinstance(kwargs, dict) else None,
                runtime=_runtime(info, now) if active else None,
                worker_pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                queue=delivery.get('routing_key') if isinstance(delivery.get('routing_key'), str) else None)


# -- the workers ------------------------------------------------------------------------------------

def pool_of(stats):
    """The pool name a node's stats report (prefork, threads, solo, eventlet, gevent, ...), or None."""
    pool = stats.get('pool') if isinstance(stats, dict) else None
    implementation = pool.get('implementation') if isinstance(pool, dict) else None
    if not isinstance(implementation, str):
        return None
    module = implementation.split(':')[0].rsplit('.', 1)[-1]
    return {'thread': 'threads'}.get(module, module)


class Snapshot(object):
    """What one broadcast says: per node its tasks, revoked ids, queues and pool."""

    def __init__(self, replies, expectation, now):
        self.replies = replies
        self.nodes = sorted(replies.nodes('ping') | replies.nodes('active'))
        self.missing = expectation.missing(set(self.nodes))
        self.duplicates = replies.duplicates()
        self.revoked = dict((node, set(i for i in ids if isinstance(i, str)))
                            for node, ids in replies.first('revoked').items())
        self.pools = dict((node, pool_of(stats)) for node, stats in replies.first('stats').items())
        self.queues = sorted(set(q['name'] for queues in replies.first('active_queues').values()
                                 for q in queues if q.get('name')))
        self.tasks = []   # (where, node, view, eta, priority)
        for where in ('active', 'reserved', 'scheduled'):
            for node, entries in replies.first(where).items():
                for entry in entries:
                    eta = priority = None
                    if where == 'scheduled':
                        eta = entry.get('eta') if isinstance(entry.get('eta'), str) else None
                        priority = entry.get('priority') if isinstance(entry.get('priority'), int) else None
                        entry = entry.get('request') if isinstance(entry.get('request'), dict) else {}
                    view = worker_view(entry, now, active=where == 'active')
                    if view['id'] is not None:
                        self.tasks.append((where, node, view, eta, priority))

    def revoked_on(self, task_id):
        return sorted(node for node, ids in self.revoked.items() if task_id in ids)

    def ids(self):
        return set(view['id'] for _w, _n, view, _e, _p in self.tasks)


def snapshot(control, params):
    expectation = Expectation(params['expected_nodes'], params['expected_count'])
    replies = control.request(SNAPSHOT, expectation, timeout=params['timeout'])
    return Snapshot(replies, expectation, time.time())


def _entry(where, view, **fields):
    entry = dict(id=view.get('id'), name=view.get('task'), where=where, node=None, queue=None, position=None,
                 priority=None, eta=None, runtime=None, worker_pid=None, revoked_on=[])
    entry.update(fields)
    return entry


def worker_entries(snap, selector):
    out = []
    for where, node, view, eta, priority in snap.tasks:
        if selector.matches(view):
            out.append(_entry(where, view, node=node, queue=view['queue'], eta=eta, priority=priority,
                              runtime=view['runtime'], worker_pid=view['worker_pid']))
    return out


# -- the queues -------------------------------------------------------------------------------------

def read_queue(queues, name, selector):
    """Matching ready messages of one queue, with their position in run order (1 runs next): one read."""
    describe = message_describer(selector)
    out = []
    if queues.transport == 'redis':
        for position, (step, raw) in enumerate(queues.elements(name), 1):
            if not selector.may_match_raw(raw):
                continue
            view = redis_view(raw, describe)
            if selector.matches(view):
                out.append(_entry('queued', view, queue=name, position=position, priority=view['priority'],
                                  eta=view['eta'], priority_step=step))
        return out
    for position, view in enumerate(queues.messages(name, 'queues', describe), 1):
        if selector.matches(view):
            out.append(_entry('queued', view, queue=name, position=position, priority=view['priority'],
                              eta=view['eta']))
    return out


def held_entries(queues, selector, bindings=None):
    """Redis: the matching entries of kombu's unacked hash, each with its delivery tag and queue."""
    from ansible_collections.celeryops.fleet.plugins.module_utils._redis_queues import route
    describe = message_describer(selector)
    out = []
    for tag, value in queues.held_entries():
        if not selector.may_match_raw(value):
            continue
        try:
            held = loads(value) if value is not None else None
        except NotAnEnvelope:
            continue
        if not (isinstance(held, list) and len(held) == 3 and isinstance(held[0], dict)
                and all(isinstance(part, str) for part in held[1:])):
            continue
        view = redis_view(held[0], describe)
        if not selector.matches(view):
            continue
        if bindings is None:
            bindings = queues.bindings()
        routed = route(bindings, held[1], held[2])
        out.append(_entry('unacked', view, queue=routed[0] if routed else None, priority=view['priority'],
                          eta=view['eta'], delivery_tag=tag.decode('utf-8', 'replace') if isinstance(tag, bytes) else tag))
    return out


def names_to_read(params, snap):
    """The queues named, or those the answering workers consume."""
    return list(dict.fromkeys(params['queues'])) if params['queues'] else snap.queues


def open_states(queues, names):
    """queue_states of the queues to read, refusing on RabbitMQ a queue that a read would change."""
    states = queue_states(queues, names) if names else []
    refuse_unsafe(queues, states, 'queues')
    return states


# -- the result backend -----------------------------------------------------------------------------

def backend_broker(params):
    """The Redis result backend to read (result_backend, or result_backend_broker: the broker's), parsed; or None.
    Raises OptionError naming the option."""
    broker = params.get('result_backend_broker')
    if broker:
        url, option = params['broker_url'], 'result_backend_broker'
    else:
        url, option = params.get('result_backend'), 'result_backend'
        if not url:
            return None
    # The broker's own Redis may sit behind Sentinel (its master_name and sentinel_password are the broker's).
    schemes, shown = (('redis://', 'rediss://', 'sentinel://'), 'redis://, rediss:// or sentinel://') if broker else \
        (('redis://', 'rediss://'), 'redis:// or rediss://')
    if not url or not url.lower().startswith(schemes):
        raise OptionError('%s: the result backend must be a %s URL' % (option, shown), option=option)
    try:
        return parse_broker_url(url, password=params.get('broker_password') if broker else None,
                                timeout=params['connect_timeout'], tls_ca_file=params.get('tls_ca_file'),
                                tls_cert_file=params.get('tls_cert_file'), tls_key_file=params.get('tls_key_file'),
                                tls_verify=params.get('tls_verify'), master_name=params.get('master_name') if broker else None,
                                sentinel_password=params.get('sentinel_password') if broker else None)
    except OptionError as error:
        raise OptionError('%s: %s' % (option, error.msg), option=option)


def backend_states(params, ids):
    """id -> {state, date_done} from the Redis result backend; never unpickles: a value that is not JSON is
    state unknown. Ids with no stored result are left out (Celery's PENDING)."""
    broker = backend_broker(params)
    if broker is None or not ids:
        return {}
    from ansible_collections.celeryops.fleet.plugins.module_utils._redis_connection import RedisConnection
    connection = None
    try:
        connection = RedisConnection(broker)
        ids = sorted(ids)
        values = connection.call(connection.client.mget, [RESULT_KEY + i for i in ids])
    except BrokerError as error:
        error.option = 'result_backend_broker' if params.get('result_backend_broker') else 'result_backend'
        raise
    finally:
        if connection is not None:
            connection.close()
    out = {}
    for task_id, value in zip(ids, values):
        if value is None:
            continue
        try:
            meta = loads(value)
        except NotAnEnvelope:
            meta = None
        if isinstance(meta, dict) and isinstance(meta.get('status'), str):
            done = meta.get('date_done')
            out[task_id] = dict(state=meta['status'], date_done=done if isinstance(done, str) else None)
        else:
            out[task_id] = dict(state='unknown', date_done=None)
    return out


# -- celery_task_info -------------------------------------------------------------------------------

def find(params, control, queues):
    """Every matching task: a dict of tasks, stuck, counts, nodes, missing, duplicates, queues, not_found."""
    selector = Selector(params)
    snap = snapshot(control, params)
    tasks = worker_entries(snap, selector)
    names = names_to_read(params, snap)
    read = []
    if queues is not None:
        for state in open_states(queues, names):
            found = read_queue(queues, state['name'], selector) if state['exists'] and state['messages'] else []
            tasks += found
            read.append(dict(name=state['name'], exists=state['exists'], messages=state['messages'],
                             matched=len(found)))
        if queues.transport == 'redis':
            reported = snap.ids()
            tasks += [e for e in held_entries(queues, selector) if e['id'] not in reported]
    found_ids = set(e['id'] for e in tasks)
    if selector.id_only():
        for task_id in sorted(selector.ids - found_ids):
            nodes = snap.revoked_on(task_id)
            if nodes:
                tasks.append(_entry('revoked', {'id': task_id, 'task': None}))
                found_ids.add(task_id)
    for entry in tasks:
        entry['revoked_on'] = snap.revoked_on(entry['id']) if entry['id'] else []
    tasks.sort(key=lambda e: (WHERE.index(e['where']), e['node'] or '', e['queue'] or '', e['position'] or 0,
                              e['id'] or ''))
    stuck = []
    if params['older_than'] is not None:
        stuck = sorted((e for e in tasks if e['where'] == 'active'), key=lambda e: e['runtime'])
    counts = dict((where, sum(1 for e in tasks if e['where'] == where)) for where in WHERE)
    counts.update(total=len(tasks), stuck=len(stuck))
    return dict(tasks=tasks, stuck=stuck, counts=counts, nodes=snap.nodes, missing=snap.missing,
                duplicates=snap.duplicates, queues=read,
                not_found=sorted((selector.ids or set()) - found_ids))


def info_thresholds(found, params):
    """(option, text) of each threshold that does not hold."""
    problems = []
    if params['max_stuck'] is not None and found['counts']['stuck'] > params['max_stuck']:
        problems.append(('max_stuck', '%d tasks active for more than %ss (max_stuck %d): %s' % (
            found['counts']['stuck'], params['older_than'], params['max_stuck'],
            ', '.join('%s[%s] on %s for %ss' % (e['name'], e['id'], e['node'], e['runtime'])
                      for e in found['stuck'][:10]))))
    if params['max_tasks'] is not None and found['counts']['total'] > params['max_tasks']:
        problems.append(('max_tasks', '%d tasks match (max_tasks %d)' % (found['counts']['total'], params['max_tasks'])))
    return problems


def open_control_and_queues(params, broker):
    from ansible_collections.celeryops.fleet.plugins.module_utils._queues import open_queues
    control = Control(broker, redis_layout(params))
    try:
        queues = open_queues(params)
    except BaseException:
        control.close()
        raise
    return control, queues


def task_info(params, broker, result):
    control, queues = open_control_and_queues(params, broker)
    try:
        def probe():
            found = find(params, control, queues)
            return not info_thresholds(found, params), found

        def reconnect():
            control.reconnect()
            queues.reconnect()
        thresholds = params['max_stuck'] is not None or params['max_tasks'] is not None
        if params['wait'] and thresholds:
            found = wait_in_result(result, probe, params, lambda f: '; '.join(text for _o, text in info_thresholds(f, params))
                                   if f else 'no answer', dict.update, reconnect=reconnect)
        else:
            found = find(params, control, queues)
        if queues.management_error:
            result['management_error'] = queues.management_error
    finally:
        control.close()
        queues.close()
    result.update(found)
    result['undecodable'] = control.undecodable
    if backend_broker(params) is not None:
        states = backend_states(params, set(e['id'] for e in found['tasks'] if e['id']) | set(found['not_found']))
        for entry in found['tasks']:
            entry['result'] = states.get(entry['id'])
        result['result_states'] = states
    problems = info_thresholds(found, params)
    if problems:
        raise BrokerError('thresholds not met: ' + '; '.join(text for _o, text in problems), option=problems[0][0])


# -- celery_task ------------------------------------------------------------------------------------

def check_signal(name):
    """'SIGTERM' for 'TERM', 'sigterm', 'SIGTERM' or '15'; OptionError naming signal otherwise."""
    text = str(name).strip().upper()
    if text.isdigit():
        try:
            return signals.Signals(int(text)).name
        except ValueError:
            pass
    elif not text.startswith('SIG'):
        text = 'SIG' + text
    if text.isdigit() or text not in signals.Signals.__members__ or text in ('SIGSTOP',):
        raise OptionError("signal: '%s' is not a signal name such as SIGTERM or SIGKILL" % name, option='signal')
    return text


class Revoker(object):
    """celery_task: revoke (and terminate) the selected tasks, remove their messages from the queues."""

    def __init__(self, params, control, queues, check_mode, warn):
        self.params = params
        self.control = control
        self.queues = queues
        self.check_mode = check_mode
        self.warn = warn
        self.selector = Selector(params, params.get('stamped_headers'))

    def run(self, result):
        params, selector = self.params, self.selector
        before = snapshot(self.control, params)
        result.update(nodes=before.nodes, missing=before.missing, duplicates=before.duplicates)
        # A worker does not report a task's stamps: stamped_headers match only messages (and the workers'
        # revoke_by_stamped_headers does the rest).
        on_workers = worker_entries(before, selector)
        for entry in on_workers:
            entry['revoked_on'] = before.revoked_on(entry['id'])
        names = names_to_read(params, before)
        states = open_states(self.queues, names)   # refuses before anything is sent
        # The messages to remove, queue by queue (every id a pass saw is revoked, also one a worker took meanwhile).
        seen = set()
        removed = {}
        describe = message_describer(selector)

        def matcher(view):
            if selector.matches(view):
                seen.add(view['id'])
                return dict(id=view['id'], name=view['task'])
            return None
        for state in states:
            if not (state['exists'] and state['messages']):
                removed[state['name']] = []
            elif self.queues.transport == 'redis':
                removed[state['name']] = self.queues.purge_matching(
                    state['name'], lambda raw: matcher(redis_view(raw, describe)) if selector.may_match_raw(raw) else None,
                    self.check_mode)
            else:
                removed[state['name']] = self.queues.purge_matching(
                    state['name'], matcher, self.check_mode, option='queues', describe=describe)
        held = held_entries(self.queues, selector) if self.queues.transport == 'redis' else []
        removed_held = 0
        if held and params['remove_held'] and not self.check_mode:
            removed_held = self.queues.remove_held([e['delivery_tag'] for e in held])
        ids = set(selector.ids or ()) | set(e['id'] for e in on_workers) | set(i for i in seen if i) \
            | set(e['id'] for e in held if e['id'])
        answering = [node for node in before.nodes if node in before.revoked]
        to_revoke = sorted(i for i in ids if not answering or not all(i in before.revoked[n] for n in answering))
        active = [e for e in on_workers if e['where'] == 'active'] if params['state'] == 'terminated' else []
        can_terminate = [e for e in active if before.pools.get(e['node']) in TERMINATING_POOLS]
        cannot = {}
        for e in active:
            if e not in can_terminate:
                cannot.setdefault(e['node'], dict(node=e['node'], pool=before.pools.get(e['node']), ids=[]))['ids'] \
                    .append(e['id'])
        result.update(
            revoked=to_revoke, tasks=sorted(on_workers + held, key=lambda e: (e['where'], e['node'] or '', e['id'] or '')),
            removed=dict((name, [m['id'] for m in msgs]) for name, msgs in removed.items()),
            held=[dict(id=e['id'], name=e['name'], queue=e['queue'], delivery_tag=e['delivery_tag']) for e in held],
            removed_held=removed_held if not self.check_mode else (len(held) if params['remove_held'] else 0),
            terminated=sorted(set(e['id'] for e in can_terminate)), cannot_terminate=sorted(
                cannot.values(), key=lambda c: c['node']),
            not_answering=list(before.missing), stamped_headers_sent=False)
        for item in cannot.values():
            self.warn('%s runs the %s pool, which cannot terminate a running task (prefork, eventlet and gevent can): '
                      '%s revoked but left running' % (item['node'], item['pool'] or 'unknown', ', '.join(item['ids'])))
        removed_count = sum(len(m) for m in removed.values())
        result['changed'] = bool(to_revoke or removed_count or result['removed_held'] or can_terminate
                                 or params.get('stamped_headers'))
        result['diff'] = self._diff(before, removed, to_revoke, can_terminate)
        if self.check_mode:
            return
        confirmed = set()
        if to_revoke:
            confirmed = self._send('revoke', dict(task_id=to_revoke, terminate=False, signal=None), answering)
        if params.get('stamped_headers'):
            self._send('revoke_by_stamped_headers', dict(
                headers=params['stamped_headers'], terminate=params['state'] == 'terminated',
                signal=params['signal']), answering)
            result['stamped_headers_sent'] = True
        if can_terminate:
            nodes = sorted(set(e['node'] for e in can_terminate))
            self._send('revoke', dict(task_id=result['terminated'], terminate=True, signal=params['signal']), nodes,
                       destination=nodes)
            self._wait_terminated(nodes, set(result['terminated']))
        if to_revoke:
            result['not_answering'] = sorted(set(before.missing) | set(n for n in answering if n not in confirmed))
            if not answering:
                self.warn('no worker answered: the revoke of %d tasks was broadcast but no worker confirmed it; a '
                          'worker that is offline never hears it (its removed messages are gone, though)'
                          % len(to_revoke))
        if to_revoke or can_terminate or params.get('stamped_headers'):
            # What the workers say now (the revoked lists confirm the revoke), not what was predicted.
            after = snapshot(self.control, params)
            result['diff']['after']['nodes'] = self._node_counts(after, set(result['revoked']) | ids)

    def _send(self, command, arguments, answering, destination=None):
        """One control command to every worker (or ``destination``); the nodes that acknowledged it."""
        replies = self.control.request({command: arguments}, Expectation(answering) if answering else None,
                                       destination=destination, timeout=self.params['timeout'])
        confirmed = set()
        for node, reply in replies.first(command).items():
            if isinstance(reply, dict) and 'error' in reply:
                self.warn('%s on %s failed: %s' % (command, node, reply['error']))
            else:
                confirmed.add(node)
        return confirmed

    def _wait_terminated(self, nodes, ids):
        def probe():
            replies = self.control.request({'active': {}}, Expectation(nodes), destination=nodes,
                                           timeout=self.params['timeout'])
            still = sorted('%s on %s' % (task.get('id'), node) for node, tasks in replies.first('active').items()
                           for task in tasks if task.get('id') in ids)
            return not still and set(nodes) <= replies.nodes('active'), still
        try:
            wait_until(probe, self.params['terminate_timeout'], 0.5,
                       lambda still: 'tasks still active after terminate: %s' % ', '.join(still or ['(no answer)']))
        except BrokerError as error:
            error.msg = error.msg.replace('(wait_timeout)', '(terminate_timeout)')
            error.option = 'terminate_timeout'
            error.details.pop('last_state', None)
            raise

    @staticmethod
    def _node_counts(snap, ids):
        out = {}
        for node in snap.nodes:
            counts = dict(active=0, reserved=0, scheduled=0)
            for where, n, view, _e, _p in snap.tasks:
                if n == node and view['id'] in ids:
                    counts[where] += 1
            counts['revoked'] = len(snap.revoked.get(node, set()) & ids)
            out[node] = counts
        return out

    def _diff(self, before, removed, to_revoke, terminated):
        ids = set(to_revoke) | set(before.ids() & (self.selector.ids or set())) | set(
            e['id'] for e in worker_entries(before, self.selector))
        nodes_before = self._node_counts(before, ids)
        nodes_after = {}
        for node, counts in nodes_before.items():
            counts = dict(counts)
            counts['active'] -= sum(1 for e in terminated if e['node'] == node)
            counts['revoked'] = len((before.revoked.get(node, set()) | set(to_revoke)) & ids)
            nodes_after[node] = counts
        return dict(before=dict(queues=dict((name, len(msgs)) for name, msgs in removed.items()), nodes=nodes_before),
                    after=dict(queues=dict((name, 0) for name in removed), nodes=nodes_after))


def revoke(params, broker, check_mode, warn, result):
    control, queues = open_control_and_queues(params, broker)
    if queues.transport == 'redis':
        # Through Sentinel, each removal ends with WAIT for the replicas (RedisQueues.replicate), within timeout too.
        queues.replica_wait, queues.warn = params['timeout'], warn
    try:
        Revoker(params, control, queues, check_mode, warn).run(result)
        if queues.management_error:
            result['management_error'] = queues.management_error
    finally:
        control.close()
        queues.close()
