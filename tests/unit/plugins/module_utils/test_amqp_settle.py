# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How AmqpQueues settles received messages: one multiple ack or nack per run of neighbours."""

import pytest

from ansible_collections.celeryops.fleet.plugins.module_utils._amqp_queues import AmqpQueues
from ansible_collections.celeryops.fleet.plugins.module_utils._broker import parse_broker_url


class RecordingChannel(object):
    def __init__(self):
        self.frames = []

    def basic_ack(self, delivery_tag, multiple=False):
        self.frames.append(('ack', delivery_tag, multiple))

    def basic_nack(self, delivery_tag, multiple=False, requeue=True):
        self.frames.append(('nack' if requeue else 'drop', delivery_tag, multiple))


class RecordingConnection(object):
    """An AmqpConnection's calls run at once on one recording channel."""

    def __init__(self):
        self.recorder = RecordingChannel()

    def channel(self):
        return self.recorder

    def call(self, func, *args, **kwargs):
        kwargs.pop('what', None)
        return func(*args, **kwargs)


def settle(received, going):
    queues = object.__new__(AmqpQueues)   # no broker: only the settling logic
    queues.broker = parse_broker_url('amqp://127.0.0.1/')
    queues.connection = RecordingConnection()
    queues._settle(received, set(going))
    return queues.connection.recorder.frames


@pytest.mark.parametrize('received, going, frames', [
    # A trim that keeps the oldest 2 of 6, and one that keeps the newest 2: two frames each.
    ([1, 2, 3, 4, 5, 6], [3, 4, 5, 6], [('nack', 2, True), ('ack', 6, True)]),
    ([1, 2, 3, 4, 5, 6], [1, 2, 3, 4], [('ack', 4, True), ('nack', 6, True)]),
    # A filtered purge: one frame per run, in delivery order.
    ([1, 2, 3, 4, 5], [2, 3, 5], [('nack', 1, True), ('ack', 3, True), ('nack', 4, True), ('ack', 5, True)]),
    ([1, 2, 3], [], [('nack', 3, True)]),
    ([1, 2, 3], [1, 2, 3], [('ack', 3, True)]),
    ([], [], []),
])
def test_one_frame_per_run_of_neighbours(received, going, frames):
    assert settle(received, going) == frames
