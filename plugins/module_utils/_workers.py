# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running worker nodes: their state as their control replies tell it, and celery_worker's logic.

``node_state`` is the one reading of a node's replies (stats, active_queues, active, reserved):
celery_worker, celery_worker_info and the celery_workers inventory plugin all take it from here.

The rest is celery_worker's desired-state logic over one ``_control.Control``: ask the targeted
nodes (``Fleet.snapshot``), ``plan`` the commands per node, ``apply`` them (re-planning after the
broker went away, so nothing is applied twice), and ``confirm`` by asking again until the change
shows (a worker's acknowledgement proves nothing).

``parse_registered`` reads the task limits out of ``inspect registered``'s text replies, and
``check_rate_limits`` / ``check_time_limits`` are the one reading of the limits asked for: rate and
time limits are desired state compared per task, set with ``rate_limit`` / ``time_limit`` and
confirmed by reading ``registered`` again.
"""

from __future__ import annotations

import math
import re
import time

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, OptionError
from ansible_collections.celeryops.fleet.plugins.module_utils._control import Expectation
from ansible_collections.celeryops.fleet.plugins.module_utils._wait import wait_until

# What celery_worker asks about every node, every time it looks.
SNAPSHOT = {'ping': {}, 'active_queues': {}, 'active': {}, 'reserved': {}, 'stats': {}}
# Snapshots in a row a node must miss, while waited for, to count as gone (killed, crashed):
# one late answer from a busy node is not death.
GONE_AFTER = 2
# After the broker went away and came back, seconds during which silent nodes are not counted
# as gone: workers reconnect on their own schedule (kombu retries up to 30 s apart).
RECONNECT_GRACE = 30.0
# The option a failed control command is reported under (else state).
COMMAND_OPTIONS = {'rate_limit': 'rate_limits', 'time_limit': 'time_limits'}
# What an omitted nodes means: every node that answers.
ALL_NODES = ['*']
# The part of a node's state that celery_worker returns, before and after (and, when asked about, the
# limits of the tasks named and the pool's processes).
PUBLIC_STATE = ('queues', 'active', 'reserved', 'concurrency', 'autoscale')
OPTIONAL_STATE = ('rate_limits', 'time_limits', 'pool_processes')
# The task attributes `inspect registered` is asked for to read the limits (Celery's taskinfoitems):
# Task.time_limit is the hard limit, Task.soft_time_limit the soft one. Celery leaves out those that are None.
LIMIT_ITEMS = ['rate_limit', 'time_limit', 'soft_time_limit']
# Celery's rate syntax (celery.utils.time.rate): a number of tasks, per second unless /s, /m or /h follows.
RATE = re.compile(r'^([0-9]+(?:\.[0-9]+)?)(?:/([smh]))?$')
PER_SECOND = {'s': 1.0, 'm': 60.0, 'h': 3600.0}
# An entry of `inspect registered`: "NAME [item=value item=value]", or NAME alone when no item is set.
_ITEMS = re.compile(r'^(?:%s)=' % '|'.join(LIMIT_ITEMS))
_ITEM_SPLIT = re.compile(r' (?=(?:%s)=)' % '|'.join(LIMIT_ITEMS))


def _of(kind, value):
    return value if isinstance(value, kind) else kind()


def node_state(replies, node):
    """What one request's ``replies`` (a ``_control.Replies``) say about ``node``.

    A dict with ``node``; ``queues`` (the names it consumes, sorted, once each); ``concurrency``
    (its pool's processes now, which pool_grow and pool_shrink change, else the pool's
    max-concurrency); ``max_concurrency`` (the pool size it reports, unchanged by pool_grow); ``processes`` (the
    pids of its pool's processes, None for a pool of threads); ``pool`` (its implementation, like
    celery.concurrency.prefork:TaskPool);
    ``autoscale`` ([max, min], or None without --autoscale); ``pid``; ``active`` and ``reserved``
    (task counts) and ``tasks`` (id, name, state of each). A section that was not asked for, not
    answered or not shaped as Celery's reads as empty.
    """
    stats = _of(dict, replies.first('stats').get(node))
    pool = _of(dict, stats.get('pool'))
    autoscaler = stats.get('autoscaler')
    queues = _of(list, replies.first('active_queues').get(node))
    tasks = [dict(id=task.get('id'), name=task.get('name'), state=kind)
             for kind in ('active', 'reserved')
             for task in _of(list, replies.first(kind).get(node)) if isinstance(task, dict)]
    return dict(node=node,
                queues=sorted(set(q['name'] for q in queues if isinstance(q, dict) and isinstance(q.get('name'), str)
                                  and q['name'])),
                concurrency=len(pool['processes']) if isinstance(pool.get('processes'), list)
                else pool.get('max-concurrency'),
                max_concurrency=pool.get('max-concurrency'),
                autoscale=[autoscaler.get('max'), autoscaler.get('min')] if isinstance(autoscaler, dict) else None,
                pid=stats.get('pid'),
                processes=pool['processes'] if isinstance(pool.get('processes'), list) else None,
                pool=pool.get('implementation') if isinstance(pool.get('implementation'), str) else None,
                active=sum(1 for task in tasks if task['state'] == 'active'),
                reserved=sum(1 for task in tasks if task['state'] == 'reserved'),
                tasks=tasks)


def public_state(state):
    """A node's state as celery_worker returns it."""
    return dict((key, state[key]) for key in PUBLIC_STATE + OPTIONAL_STATE if key in state)


def _shown(value):
    if value is None:
        return 'none'
    return ','.join(map(str, value)) if isinstance(value, list) else str(value)


def label(command, arguments):
    """How an action shows in the result: 'cancel_consumer default', 'pool_grow 2', 'autoscale 8,2',
    'rate_limit proj.add 10/m', 'time_limit proj.add 5 10' (task, soft, hard as `celery control` takes them)."""
    return ' '.join([command] + [_shown(v) for v in arguments.values()])


# -- task limits -------------------------------------------------------------------------------

def rate_per_second(value):
    """Tasks per second a Celery rate limit allows (None: no limit); ValueError for what Celery would refuse
    or read as no limit (0)."""
    if value is None:
        return None
    match = RATE.match(str(value)) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if not match:
        raise ValueError('%r is not a rate like 10/s, 10/m or 10/h (null for no limit)' % (value,))
    number = float(match.group(1))
    if number <= 0:
        raise ValueError('%r allows no task at all; null means no limit' % (value,))
    return number / PER_SECOND[match.group(2) or 's']


def _seconds(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError('%s must be a number of seconds or null, got %r' % (what, value))
    try:
        number = float(value)
    except ValueError:
        raise ValueError('%s must be a number of seconds or null, got %r' % (what, value))
    if not math.isfinite(number) or number <= 0:
        raise ValueError('%s must be more than 0 seconds (null for no limit), got %r' % (what, value))
    return number


def _task_names(limits, option):
    if not isinstance(limits, dict):
        raise OptionError('%s must be a dict of task name to limit' % option, option=option)
    for task in limits:
        if not isinstance(task, str) or not task.strip() or task != task.strip():
            raise OptionError('%s: %r is not a task name' % (option, task), option=option)


def check_rate_limits(limits, option='rate_limits'):
    """task -> rate (a string as Celery takes it, or None) from the option's value; OptionError naming the option."""
    if limits is None:
        return None
    _task_names(limits, option)
    out = {}
    for task, value in limits.items():
        try:
            rate_per_second(value)
        except ValueError as error:
            raise OptionError('%s: %s: %s' % (option, task, error), option=option)
        out[task] = None if value is None else str(value)
    return out


def check_time_limits(limits, option='time_limits'):
    """task -> {'soft': seconds or None, 'hard': seconds or None} from the option's value (a task's null: no limit
    at all); OptionError naming the option."""
    if limits is None:
        return None
    _task_names(limits, option)
    out = {}
    for task, value in limits.items():
        if value is None:
            value = {}
        if not isinstance(value, dict) or set(value) - set(('soft', 'hard')):
            raise OptionError('%s: %s must be {soft: seconds, hard: seconds} (either may be null or left out), got %r'
                              % (option, task, value), option=option)
        try:
            soft, hard = (_seconds(value.get(key), key) for key in ('soft', 'hard'))
        except ValueError as error:
            raise OptionError('%s: %s: %s' % (option, task, error), option=option)
        if soft is not None and hard is not None and soft > hard:
            raise OptionError('%s: %s: soft (%s) is more than hard (%s): the hard limit would kill the task first'
                              % (option, task, value['soft'], value['hard']), option=option)
        out[task] = dict(soft=soft, hard=hard)
    return out


def _number(text):
    """A limit as `registered` shows it ("10", "10.0"), or the text itself when it is no number."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def parse_registered(entries):
    """task name -> {'rate_limit': text or None, 'time_limit': seconds or None, 'soft_time_limit': seconds or None}
    from a node's reply to `inspect registered rate_limit time_limit soft_time_limit`.

    Celery writes "NAME [item=value item=value]", or NAME alone when no item is set. A task name may hold spaces
    and brackets itself, so the items are the last " [" after which everything reads as items. What is not a
    string is skipped; a value that is no number stays text (and so differs from any limit asked for)."""
    tasks = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, str) or not entry:
            continue
        name, items = entry, {}
        if entry.endswith(']'):
            start = entry.rfind(' [')
            while start > 0:
                parsed = _items(entry[start + 2:-1])
                if parsed is not None:
                    name, items = entry[:start], parsed
                    break
                start = entry.rfind(' [', 0, start)
        tasks[name] = dict(rate_limit=items.get('rate_limit'),
                           time_limit=_number(items['time_limit']) if 'time_limit' in items else None,
                           soft_time_limit=_number(items['soft_time_limit']) if 'soft_time_limit' in items else None)
    return tasks


def _items(text):
    """{item: value} of "item=value item=value", or None when the text is not that."""
    if not _ITEMS.match(text):
        return None
    items = {}
    for part in _ITEM_SPLIT.split(text):
        key, _sep, value = part.partition('=')
        if key not in LIMIT_ITEMS or key in items:
            return None
        items[key] = value
    return items


def same_rate(wanted, current):
    """Whether a node's rate limit (text from `registered`) is the one wanted: compared as tasks per second, so
    60/m is 1/s; a rate the node shows that does not parse differs from any."""
    try:
        current = rate_per_second(current)
    except ValueError:
        return False
    wanted = rate_per_second(wanted)
    if wanted is None or current is None:
        return wanted is current
    return math.isclose(wanted, current, rel_tol=1e-9)


def task_limits(replies, node, params):
    """The state of the limits celery_worker was asked about, on ``node``: 'registered' (every task name it
    registers; None when it did not answer that question), and 'rate_limits' / 'time_limits' for the tasks named
    (None for a task it does not register)."""
    tasks = parse_registered(replies.first('registered').get(node))
    out = dict(registered=sorted(tasks) if node in replies.nodes('registered') else None)
    if params.get('rate_limits') is not None:
        out['rate_limits'] = dict((task, tasks[task]['rate_limit'] if task in tasks else None)
                                  for task in params['rate_limits'])
    if params.get('time_limits') is not None:
        out['time_limits'] = dict((task, dict(soft=tasks[task]['soft_time_limit'], hard=tasks[task]['time_limit'])
                                   if task in tasks else None) for task in params['time_limits'])
    return out


def _limit_actions(params, state):
    """The rate_limit / time_limit commands one node needs; BrokerError for a task it does not register."""
    actions = []
    for option, command in (('rate_limits', 'rate_limit'), ('time_limits', 'time_limit')):
        wanted = params.get(option)
        if wanted is None:
            continue
        if state['registered'] is None:
            raise BrokerError('%s: %s answered ping but not inspect registered within %ss, so its limits are unknown'
                              % (option, state['node'], params['timeout']), option='timeout')
        unknown = sorted(task for task in wanted if task not in state['registered'])
        if unknown:
            raise BrokerError('%s: %s not registered on %s, so its limits cannot be set (the node registers: %s)'
                              % (option, ', '.join(unknown), state['node'], _some(state['registered'])), option=option)
        for task in sorted(wanted):
            if option == 'rate_limits' and not same_rate(wanted[task], state['rate_limits'][task]):
                actions.append((command, {'task_name': task, 'rate_limit': wanted[task]}))
            if option == 'time_limits' and state['time_limits'][task] != wanted[task]:
                actions.append((command, {'task_name': task, 'soft': wanted[task]['soft'],
                                          'hard': wanted[task]['hard']}))
    return actions


def limits_applied(params, state):
    """Whether a node shows the limits asked for (not when it did not answer inspect registered)."""
    if state.get('registered') is None:
        return False
    rates = params.get('rate_limits') or {}
    times = params.get('time_limits') or {}
    return (all(same_rate(rate, state['rate_limits'].get(task)) for task, rate in rates.items())
            and all(state['time_limits'].get(task) == limits for task, limits in times.items()))


def _some(names, most=10):
    return ', '.join(names[:most]) + (' and %d more' % (len(names) - most) if len(names) > most else '') if names else 'none'


def needs_answer(params):
    """What of the desired state only a node that answers can reach (None: a silent node is there already).

    A node that does not answer consumes nothing and runs nothing: it is as drained as it is
    stopped. Consuming, or a pool size, autoscale range or events setting, needs it answering."""
    extras = [option for option in ('concurrency', 'autoscale', 'events', 'rate_limits', 'time_limits')
              if params.get(option) is not None]
    if params['state'] == 'stopped' or (params['state'] == 'drained' and not extras):
        return None
    if params['state'] == 'drained':
        return 'state drained with %s' % ' and '.join(extras)
    return 'state %s' % (params['state'] or 'change')


class Fleet(object):
    """The targeted nodes, asked about and told through one Control."""

    def __init__(self, control, params):
        self.control = control
        self.params = params
        self.all_nodes = params['nodes'] == ALL_NODES
        self.expectation = Expectation(None if self.all_nodes else params['nodes'])
        self.gone = set()   # nodes that stopped answering while waited for

    def snapshot(self, nodes=None):
        """node -> node_state for the targeted nodes that answer (with their task limits when rate_limits or
        time_limits are asked for, and whether they allow pool restarts with state restarted_pool)."""
        expectation = Expectation(sorted(nodes)) if nodes is not None else self.expectation
        commands = dict(SNAPSHOT)
        limits = self.params.get('rate_limits') is not None or self.params.get('time_limits') is not None
        restart = self.params['state'] == 'restarted_pool'
        if limits:
            commands['registered'] = {'taskinfoitems': LIMIT_ITEMS}
        if restart:
            commands['conf'] = {'with_defaults': False}
        replies = self.control.request(commands, expectation, destination=sorted(nodes) if nodes else None,
                                       timeout=self.params['timeout'])
        state = dict((node, node_state(replies, node)) for node in replies.nodes('ping')
                     if self.all_nodes or self.expectation.expects(node))
        for node, info in state.items():
            if limits:
                info.update(task_limits(replies, node, self.params))
            if restart:
                conf = replies.first('conf').get(node)
                # The setting the worker's pool_restart command checks (celery/worker/control.py); the conf
                # reply leaves out what is at its default (False).
                info['pool_restarts'] = conf.get('worker_pool_restarts') is True if isinstance(conf, dict) else None
                info['pool_processes'] = sorted(info['processes']) if info['processes'] is not None else None
        return state

    def tell(self, node, command, arguments):
        """One control command to one node; its reply is only an acknowledgement."""
        replies = self.control.request({command: arguments}, Expectation([node]), destination=[node],
                                       timeout=self.params['timeout'])
        reply = replies.first(command).get(node)
        if node not in replies.nodes(command):
            raise BrokerError('%s on %s: no reply within %ss (timeout)' % (command, node, self.params['timeout']),
                              option='timeout')
        if isinstance(reply, dict) and 'error' in reply:
            raise BrokerError('%s on %s failed: %s' % (command, node, reply['error']),
                              option=COMMAND_OPTIONS.get(command, 'state'))
        return reply.get('ok', '') if isinstance(reply, dict) else ''

    def rejoin(self, nodes, lost):
        """After the broker went away (``lost``): reconnect, within wait_timeout, and return the
        state of ``nodes`` once they all answer again (workers reconnect on their own schedule)."""
        def probe():
            state = self.snapshot(nodes) if nodes else {}
            return all(node in state for node in nodes), state
        return wait_until(probe, self.params['wait_timeout'], self.params['wait_sleep'],
                          lambda state: 'nodes not answering after the broker came back: %s'
                          % ', '.join(node for node in nodes if node not in (state or {})),
                          reconnect=self.control.reconnect, lost=lost)[0]

    def wait(self, nodes, done, describe, track_gone=True):
        """Ask ``nodes`` again until ``done(snapshot)``; returns the last snapshot.

        With ``track_gone``, a node that misses GONE_AFTER snapshots in a row joins ``self.gone``
        and is asked no more (``done`` and ``describe`` decide what that means), except for
        RECONNECT_GRACE seconds after the broker came back.
        """
        misses = dict((node, 0) for node in nodes)
        back = [None]   # when the broker came back after going away

        def probe():
            asked = [node for node in nodes if node not in self.gone]
            state = self.snapshot(asked) if asked else {}
            if track_gone:
                grace = back[0] is not None and time.monotonic() - back[0] < RECONNECT_GRACE
                for node in asked:
                    misses[node] = 0 if node in state or grace else misses[node] + 1
                    if misses[node] >= GONE_AFTER:
                        self.gone.add(node)
            return done(state), state

        def reconnect():
            self.control.reconnect()
            back[0] = time.monotonic()
        return wait_until(probe, self.params['wait_timeout'], self.params['wait_sleep'], describe,
                          reconnect=reconnect)[0]


def plan(params, state):
    """The control commands, as (command, arguments), that bring one node to the desired state."""
    if params['state'] == 'stopped':
        return [('shutdown', {})]
    actions = _limit_actions(params, state)
    current = set(state['queues'])
    if params['state'] == 'consuming':
        wanted = set(params['queues'])
        actions += [('add_consumer', {'queue': q}) for q in sorted(wanted - current)]
        if params['exclusive']:
            actions += [('cancel_consumer', {'queue': q}) for q in sorted(current - wanted)]
    elif params['state'] == 'drained':
        cancel = current & set(params['queues']) if params['queues'] else current
        actions += [('cancel_consumer', {'queue': q}) for q in sorted(cancel)]
    if params['concurrency'] is not None:
        if state['autoscale'] is not None:
            raise BrokerError('concurrency: %s autoscales (%s); set autoscale instead'
                              % (state['node'], ','.join(map(str, state['autoscale']))), option='concurrency')
        if state['concurrency'] is None:
            raise BrokerError('concurrency: %s does not report its pool size' % state['node'], option='concurrency')
        delta = params['concurrency'] - state['concurrency']
        if delta:
            actions.append(('pool_grow' if delta > 0 else 'pool_shrink', {'n': abs(delta)}))
    if params['autoscale'] is not None:
        if state['autoscale'] is None:
            raise BrokerError('autoscale: %s runs without --autoscale, so its range cannot be set' % state['node'],
                              option='autoscale')
        if list(state['autoscale']) != params['autoscale']:
            actions.append(('autoscale', {'max': params['autoscale'][0], 'min': params['autoscale'][1]}))
    if params['state'] == 'restarted_pool':
        actions.append(_pool_restart(state))
    if params['events'] is not None:
        # Workers do not report whether task events are on: the command is sent, and its reply
        # ("already enabled") tells whether it changed anything.
        actions.append(('enable_events' if params['events'] else 'disable_events', {}))
    return actions


def _pool_restart(state):
    """The pool_restart command, where the node allows it; else a BrokerError that says why not."""
    node = state['node']
    if state['pool_restarts'] is not True:
        raise BrokerError('state: restarted_pool: %s does not allow pool restarts (its Celery setting '
                          'worker_pool_restarts is %s; set it in the app, start the worker with '
                          '"-- worker_pool_restarts=True", or with the worker role set celery_workers[].pool_restarts: '
                          'true)' % (node, 'unknown: the node did not answer conf' if state['pool_restarts'] is None
                                     else 'not set'), option='state')
    if not state['processes']:
        raise BrokerError('state: restarted_pool: %s runs a pool without processes (%s), which Celery cannot restart '
                          '(only the prefork pool can)' % (node, state['pool'] or 'unknown'), option='state')
    return ('pool_restart', {})


def converge(control, params, check_mode, result):
    """Bring the nodes to the state ``params`` describe, through ``control``; fills ``result``
    (nodes, missing, gone, changed). On failure, the nodes' last known state is in ``result``."""
    fleet = Fleet(control, params)
    try:
        _converge(fleet, params, check_mode, result)
    except BrokerError as error:
        last = error.details.pop('last_state', None)
        if last is not None:
            for node, info in result['nodes'].items():
                info['after'] = public_state(last[node]) if node in last else None
        raise
    finally:
        result['gone'] = sorted(fleet.gone)


def _converge(fleet, params, check_mode, result):
    before = fleet.snapshot()
    missing = result['missing'] = fleet.expectation.missing(set(before))
    needed = needs_answer(params)
    if missing and needed:
        raise BrokerError('nodes not online (%s needs them answering): %s' % (needed, ', '.join(missing)), option='nodes')
    nodes = sorted(before)
    plans = dict((node, plan(params, before[node])) for node in nodes)
    for node in nodes:
        result['nodes'][node] = dict(before=public_state(before[node]), actions=[label(*a) for a in plans[node]])
    result['changed'] = any(plans.values())
    if check_mode or not result['changed']:
        for node in nodes:
            result['nodes'][node]['after'] = public_state(before[node])
        return
    unchanged = apply(fleet, params, nodes, plans)
    for node in nodes:
        plans[node] = [a for a in plans[node] if (node, a[0]) not in unchanged]
        result['nodes'][node]['actions'] = [label(*a) for a in plans[node]]
    result['changed'] = any(plans.values())
    after = confirm(fleet, params, nodes, plans, before)
    for node in nodes:
        result['nodes'][node]['after'] = public_state(after[node]) if node in after else None


def apply(fleet, params, nodes, plans):
    """Send each node its commands; returns the (node, command) pairs whose reply says nothing changed.

    If the broker goes away meanwhile, whether the command in flight arrived is unknown: once the
    broker and the nodes are back (within wait_timeout), what is left is planned again from their
    state then, so nothing is applied twice (a second pool_grow would grow the pool again).
    """
    unchanged = set()
    todo = list(nodes)
    actions = dict(plans)
    while todo:
        node = todo[0]
        try:
            for command, arguments in actions[node]:
                if command == 'shutdown':
                    fleet.control.send('shutdown', destination=[node])
                elif fleet.tell(node, command, arguments).startswith('task events already'):
                    unchanged.add((node, command))
        except BrokerError as error:
            if not error.lost:
                raise
            if params['state'] == 'stopped':
                fleet.rejoin([], error)   # a node that got its shutdown may be gone: sent again, it does no harm
                continue
            state = fleet.rejoin(todo, error)
            actions.update((n, plan(params, state[n])) for n in todo)
            continue
        todo.pop(0)
    return unchanged


def restart_shows(before, now):
    """Whether a node's pool restart shows: a process it had ``before`` is gone, and it has processes.

    Celery's pool_restart marks every process of the pool to exit and hands the pool one no-op task, so one
    process leaves at once; the others are blocked waiting for a task and leave, each, after the next task it
    takes. An idle pool therefore shows one new process, and the rest follow as tasks come."""
    return bool(now['processes']) and bool(set(before['processes'] or []) - set(now['processes']))


def confirm(fleet, params, nodes, plans, before=None):
    """Ask again until the change shows; the workers' acknowledgements prove nothing (a restarted pool: see
    restart_shows; ``before`` is the state it is compared with)."""
    changed = [node for node in nodes if plans[node]]
    if params['state'] == 'stopped':
        def gone(state):
            return not any(node in state for node in changed)
        return fleet.wait(changed, gone, lambda s: 'nodes still answering after shutdown: %s'
                          % ', '.join(sorted(n for n in changed if n in s)), track_gone=False)

    def applied(state):
        for node in changed:
            if node in fleet.gone and params['state'] == 'drained':
                continue  # a dead node consumes nothing
            if node in fleet.gone:
                raise BrokerError('%s stopped answering before the change could be confirmed (killed or crashed?)'
                                  % node, option='nodes')
            if node not in state:
                return False
            queues = set(state[node]['queues'])
            for command, arguments in plans[node]:
                if command in ('add_consumer', 'cancel_consumer') and (
                        (command == 'add_consumer') != (arguments['queue'] in queues)):
                    return False
            if params['concurrency'] is not None and state[node]['autoscale'] is None \
                    and state[node]['concurrency'] != params['concurrency']:
                return False
            if params['autoscale'] is not None and list(state[node]['autoscale'] or []) != params['autoscale']:
                return False
            if ('rate_limits' in state[node] or 'time_limits' in state[node]) and not limits_applied(params, state[node]):
                return False
            if params['state'] == 'restarted_pool' and not restart_shows(before[node], state[node]):
                return False
        return True

    def describe(state):
        return '; '.join('%s consumes %s with %s processes%s%s' % (
            node, ', '.join(state[node]['queues']) or 'nothing', state[node]['concurrency'],
            ', autoscale %s' % state[node]['autoscale'] if state[node]['autoscale'] else '',
            ''.join(', %s %s' % (key.replace('_', ' '), state[node][key]) for key in OPTIONAL_STATE if key in state[node]))
            if node in state else '%s stopped answering' % node for node in changed)
    after = fleet.wait(changed, applied, describe) if changed else fleet.snapshot(nodes)
    if params['state'] != 'drained':
        return after

    def idle(state):
        # A node gone during the drain runs nothing any more: not waited for (reported as gone).
        return all(node in fleet.gone or (node in state and not state[node]['active'] and not state[node]['reserved'])
                   for node in nodes)

    def describe_busy(state):
        return 'nodes still holding tasks: ' + '; '.join(
            '%s: %s' % (node, ', '.join('%s %s[%s]' % (t['state'], t['name'], t['id'])
                                        for t in state[node]['tasks']) or 'idle')
            if node in state else '%s stopped answering (its unacknowledged tasks go back to the queue)' % node
            for node in nodes)
    return fleet.wait(nodes, idle, describe_busy)
