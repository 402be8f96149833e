"""The decode_message, node_host and node_name filters and the queue_depth lookup, in playbooks, on real messages."""

import urllib.parse

import pytest

from harness import management, publish

ADD = 'fleet_tasks.add'


def debug(ansible, expressions, play_vars=None):
    """Evaluate each Jinja expression in one playbook; returns each task's result."""
    tasks = [{'ansible.builtin.debug': {'msg': '{{ %s }}' % expression}} for expression in expressions]
    return ansible.play(tasks, play_extra={'vars': play_vars or {}})


@pytest.mark.mitogen
def test_redis_elements_decoded_and_queue_depth(redis_env, ansible):
    url = redis_env.url
    ids = publish(url, ADD, 'q1', args=(1, 2), count=2, countdown=60, retries=3)
    publish(url, ADD, 'q1', args=(3, 4), count=3, priority=5)
    element = redis_env.client.lindex('q1', -1).decode()  # the next to run at step 0
    results = debug(ansible, [
        "query('celeryops.fleet.queue_depth', 'q1', 'missing', broker_url=url)",
        "element | celeryops.fleet.decode_message",
        "element | from_json | celeryops.fleet.decode_message",
        "'hello' | celeryops.fleet.decode_message",
        "'{\"x\": 1}' | celeryops.fleet.decode_message",
        "['w1@web1', 'web2'] | map('celeryops.fleet.node_host') | list",
        "['w1@web1', 'w2@a@b', 'web2'] | map('celeryops.fleet.node_name') | list",
        "42 | celeryops.fleet.node_host",
        "query('celeryops.fleet.queue_depth', 'q1', broker_url='redis://:pw-hidden-7@127.0.0.1:1/0')",
        "query('celeryops.fleet.queue_depth', broker_url=url)",
    ], play_vars=dict(url=url, element=element))
    depth, decoded, parsed, not_json, not_envelope, hosts, names, not_a_name, down, no_names = results
    assert depth['msg'] == [5, 0], depth
    message = decoded['msg']
    assert (message['task'], message['id'], message['retries'], message['argsrepr']) == (ADD, ids[0], 3, '(1, 2)')
    assert message['eta'] and message['priority'] == 0 and message['protocol'] == 2
    assert parsed['msg'] == message
    for result, expected in ((not_json, 'decode_message: not a kombu message: not JSON (hello)'),
                             (not_envelope, 'decode_message: not a kombu message: a JSON dict without "headers" or '
                                            '"body"'),
                             (not_a_name, "node_host: expected a node name like 'worker1@host', got int"),
                             (down, 'queue_depth: cannot connect to redis 127.0.0.1:1 db 0'),
                             (no_names, 'queue_depth: name at least one queue')):
        assert result['failed'] and expected in result['msg'], result['msg']
        assert 'Traceback' not in result['msg']
    assert hosts['msg'] == ['web1', 'web2']
    assert names['msg'] == ['w1', 'w2', None]
    assert 'pw-hidden-7' not in ansible.last['stdout'] + ansible.last['stderr']


@pytest.mark.mitogen
def test_amqp_messages_decoded_and_queue_depth(rabbit_env, ansible):
    url = rabbit_env.url
    ids = publish(url, ADD, 'q1', args=(5, 6), count=3, priority=7)
    rabbit_env.wait_for('q1', lambda record: record.get('messages_ready') == 3)  # the management API lags
    got = management('POST', '/api/queues/%s/q1/get' % urllib.parse.quote(rabbit_env.vhost, safe=''),
                     {'count': 1, 'ackmode': 'ack_requeue_true', 'encoding': 'auto'})[0]
    results = debug(ansible, [
        "query('celeryops.fleet.queue_depth', 'q1', 'missing', broker_url=url)",
        "got | celeryops.fleet.decode_message",
        "got.payload | celeryops.fleet.decode_message(headers=got.properties.headers, properties=got.properties)",
        "got.payload | celeryops.fleet.decode_message(headers='oops')",
    ], play_vars=dict(url=url, got=got))
    depth, record, body, bad_headers = results
    assert depth['msg'] == [3, 0], depth
    for result in (record, body):
        message = result['msg']
        assert (message['task'], message['id'], message['argsrepr']) == (ADD, ids[0], '(5, 6)'), message
        assert message['priority'] == 7
    assert bad_headers['failed'] and 'decode_message: headers must be a dict, got str' in bad_headers['msg']
