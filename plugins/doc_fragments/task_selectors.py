# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):

    # Which tasks celery_task_info and celery_task look at (module_utils/_tasks.py, selector_argument_spec).
    DOCUMENTATION = r"""
options:
  ids:
    description:
      - Task ids to select.
    type: list
    elements: str
  task_names:
    description:
      - Task names to select, as in the C(task) header (for example C(proj.tasks.add)).
    type: list
    elements: str
  args_contains:
    description:
      - Select tasks whose positional arguments include every one of these values (a subset match, in any order;
        values compare as JSON, so V(1) matches C(1.0) but not V(true)).
      - Arguments are read from a JSON message body. For any other serializer (pickle, msgpack, yaml) they are read
        back from the C(argsrepr) header as a Python literal, which evaluates nothing; a task whose arguments
        cannot be read that way does not match. A body is never unpickled.
      - For tasks on workers, the arguments are those the worker reports.
    type: list
    elements: raw
  kwargs_contains:
    description:
      - Select tasks whose keyword arguments include every one of these keys with these values (from the JSON
        body, or read back from C(kwargsrepr), as O(args_contains)).
    type: dict
  older_than:
    description:
      - Select running (active) tasks that have been running for at least this many seconds. Messages in queues
        and tasks not yet started never match it.
      - The run time is the module's clock minus the start time the worker reports; the clocks of the workers'
        hosts and of the host the module runs on must agree.
    type: float
  queues:
    description:
      - The queues to read. Default, the queues that the answering workers consume.
      - Each queue is read once. On Redis every priority sub-queue is read. On RabbitMQ the ready messages are
        received and given back (requeued), in their places, with the C(redelivered) flag set, as
        M(celeryops.fleet.celery_queue) does for a filtered purge; only classic queues are read, a quorum queue or
        a stream is refused before anything is read or sent.
    type: list
    elements: str
  expected_nodes:
    description:
      - Node names of the workers that should answer, like V(worker1@web1) (glob patterns allowed). The broadcast
        returns as soon as all named nodes answered instead of waiting out O(timeout); nodes that did not answer
        are in RV(missing).
    type: list
    elements: str
  expected_count:
    description:
      - How many workers should answer; the broadcast returns as soon as that many have.
    type: int
  timeout:
    description:
      - Seconds to collect the workers' replies to the broadcast, in all. Without O(expected_nodes) or
        O(expected_count) the whole time is used.
    type: float
    default: 1.0
notes:
  - Every selector given must hold (they combine with AND).
  - Workers keep the ids of revoked tasks in memory only (unless started with C(--statedb)), so a restarted worker
    forgets them.
"""
