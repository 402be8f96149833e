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
"""

from __future__ import annotations

import time

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError
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
# What an omitted nodes means: every node that answers.
ALL_NODES = ['*']
# The part of a node's state that celery_worker returns, before and after.
PUBLIC_STATE = ('queues', 'active', 'reserved', 'concurrency', 'autoscale')


def _of(kind, value):
    return value if isinstance(value, kind) else kind()


def node_state(replies, node):
    """What one request's ``replies`` (a ``_control.Replies``) say about ``node``.

    A dict with ``node``; ``queues`` (the names it consumes, sorted, once each); ``concurrency``
    (its pool's processes now, which pool_grow and pool_shrink change, else the pool's
    max-concurrency); ``max_concurrency`` (the pool size it reports, unchanged by pool_grow);
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
                active=sum(1 for task in tasks if task['state'] == 'active'),
                reserved=sum(1 for task in tasks if task['state'] == 'reserved'),
                tasks=tasks)


def public_state(state):
    """A node's state as celery_worker returns it."""
    return dict((key, state[key]) for key in PUBLIC_STATE)


def label(command, arguments):
    """How an action shows in the result: 'cancel_consumer default', 'pool_grow 2', 'autoscale 8,2'."""
    return ' '.join([command] + [str(v) if not isinstance(v, list) else ','.join(map(str, v))
                                 for v in arguments.values()])


def needs_answer(params):
    """What of the desired state only a node that answers can reach (None: a silent node is there already).

    A node that does not answer consumes nothing and runs nothing: it is as drained as it is
    stopped. Consuming, or a pool size, autoscale range or events setting, needs it answering."""
    extras = [option for option in ('concurrency', 'autoscale', 'events') if params[option] is not None]
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
        """node -> node_state for the targeted nodes that answer."""
        expectation = Expectation(sorted(nodes)) if nodes is not None else self.expectation
        replies = self.control.request(SNAPSHOT, expectation, destination=sorted(nodes) if nodes else None,
                                       timeout=self.params['timeout'])
        return dict((node, node_state(replies, node)) for node in replies.nodes('ping')
                    if self.all_nodes or self.expectation.expects(node))

    def tell(self, node, command, arguments):
        """One control command to one node; its reply is only an acknowledgement."""
        replies = self.control.request({command: arguments}, Expectation([node]), destination=[node],
                                       timeout=self.params['timeout'])
        reply = replies.first(command).get(node)
        if node not in replies.nodes(command):
            raise BrokerError('%s on %s: no reply within %ss (timeout)' % (command, node, self.params['timeout']),
                              option='timeout')
        if isinstance(reply, dict) and 'error' in reply:
            raise BrokerError('%s on %s failed: %s' % (command, node, reply['error']), option='state')
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
    actions = []
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
    if params['events'] is not None:
        # Workers do not report whether task events are on: the command is sent, and its reply
        # ("already enabled") tells whether it changed anything.
        actions.append(('enable_events' if params['events'] else 'disable_events', {}))
    return actions


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
    after = confirm(fleet, params, nodes, plans)
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


def confirm(fleet, params, nodes, plans):
    """Ask again until the change shows; the workers' acknowledgements prove nothing."""
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
        return True

    def describe(state):
        return '; '.join('%s consumes %s with %s processes%s' % (
            node, ', '.join(state[node]['queues']) or 'nothing', state[node]['concurrency'],
            ', autoscale %s' % state[node]['autoscale'] if state[node]['autoscale'] else '')
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
