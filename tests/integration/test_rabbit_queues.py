"""celery_queue_info and celery_queue against a real RabbitMQ, through ansible-playbook.

Messages are published by Celery (the test app declares its queues with x-max-priority 10,
so a higher priority runs first) and held by real workers. The broker's own view
(``rabbit_env.read_ids``: the management API's get with requeue) is the reference for what is
in a queue and in which order.
"""

import http.server
import socket
import threading
import time
import urllib.parse
import uuid

import pytest

from harness import AMQP_PORT, management, publish


# The module's own work on the brokers, alike on every ansible-core: the oldest runs the `mitogen` tests of it (conftest).
pytestmark = pytest.mark.module_logic

ADD = 'fleet_tasks.add'
MAIL = 'fleet_tasks.mail'
SLEEP = 'fleet_tasks.sleep'
SECRET = 'pw-' + uuid.uuid4().hex


def info(**args):
    return {'celeryops.fleet.celery_queue_info': args}


def change(**args):
    return {'celeryops.fleet.celery_queue': args}


def by_name(result):
    return dict((q['name'], q) for q in result['queues'])


def ok(result):
    assert not result.get('failed'), (result.get('msg'), result)
    return result


def failed(result, *expected):
    """A clean failure whose message holds every expected text (and no traceback)."""
    assert result.get('failed'), result
    assert 'Traceback' not in result['msg'], result['msg']
    for text in expected:
        assert text in result['msg'], (text, result['msg'])
    return result


def closed_port():
    """A loopback port nothing listens on."""
    probe = socket.socket()
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def read_ids_eventually(env, name, expected, timeout=15):
    """read_ids until it equals ``expected`` (a killed worker's messages come back asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        got = env.read_ids(name)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def module_connected(env, timeout=30):
    """Wait until a module (its AMQP connection is named celeryops.fleet) is connected to the vhost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connections = management('GET', '/api/vhosts/%s/connections' % env.qvhost) or []
        if any((c.get('client_properties') or {}).get('connection_name') == 'celeryops.fleet' for c in connections):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def not_management():
    """An HTTP server that is not the management API: 404 for everything."""
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield 'http://127.0.0.1:%d/' % server.server_address[1]
    server.shutdown()
    server.server_close()


# -- celery_queue_info -------------------------------------------------------------------------

@pytest.mark.mitogen
def test_counts_peek_in_priority_order_breakdown_and_missing(rabbit_env, ansible):
    url = rabbit_env.url
    low = publish(url, ADD, 'work', args=(1, 2), count=3)
    mid = publish(url, MAIL, 'work', args=('a@b',), count=2, priority=5)
    high = publish(url, MAIL, 'work', args=('c@d',), count=1, priority=9)
    other = publish(url, ADD, 'other', args=(0, 0), count=4)
    run_order = high + mid + low
    assert rabbit_env.read_ids('work') == run_order  # the broker agrees: highest priority first
    absent_default = 'celeryops-absent-' + uuid.uuid4().hex

    first, again, default_vhost = ansible.play([
        info(broker_url=url, queues=['work', 'other', 'absent'], peek=4, breakdown=True),
        info(broker_url=url, queues=['work', 'other'], peek=50),
        # kombu's spelling of the default vhost, as users paste CELERY_BROKER_URL
        info(broker_url='amqp://guest:guest@127.0.0.1:%d//' % AMQP_PORT, queues=[absent_default]),
    ])

    ok(first)
    assert first['changed'] is False
    assert 'management_error' not in first  # the default management URL (port 15672) answered
    # guest's password is guest: the user would show the password, so it is null, and the module says why.
    assert first['broker'] == dict(transport='amqp', tls=False, host='127.0.0.1', port=AMQP_PORT, user=None,
                                   vhost=rabbit_env.vhost)
    assert any('broker.user is null' in warning for warning in first.get('warnings', [])), first.get('warnings')
    queues = by_name(first)
    assert [q['name'] for q in first['queues']] == ['work', 'other', 'absent']
    work = queues['work']
    assert dict((k, v) for k, v in work.items() if k != 'peek') == dict(
        name='work', exists=True, messages=6, unacked=0, consumers=0, priorities=None, source='amqp+management',
        type='classic', tasks={ADD: 3, MAIL: 3}, undecodable=0)
    assert [m['id'] for m in work['peek']] == run_order[:4]
    assert [m['priority'] for m in work['peek']] == [9, 5, 5, None]  # sent without a priority
    top = work['peek'][0]
    assert (top['task'], top['argsrepr'], top['kwargsrepr'], top['retries'], top['eta']) == (
        MAIL, "('c@d',)", '{}', 0, None)
    assert work['peek'][3]['task'] == ADD and work['peek'][3]['argsrepr'] == '(1, 2)'
    assert [m['id'] for m in queues['other']['peek']] == other
    assert queues['other']['messages'] == 4 and queues['other']['tasks'] == {ADD: 4}
    assert queues['absent'] == dict(name='absent', exists=False, messages=0, unacked=0, consumers=0,
                                    priorities=None, source='amqp+management', type=None, peek=[], tasks={},
                                    undecodable=0)

    # The first peek and breakdown lost nothing and reordered nothing; asking for more messages
    # than there are gives all of them, in run order.
    assert [(q['name'], q['messages'], [m['id'] for m in q['peek']]) for q in ok(again)['queues']] == [
        ('work', 6, run_order), ('other', 4, other)]
    assert rabbit_env.read_ids('work') == run_order
    assert rabbit_env.read_ids('other') == other

    assert ok(default_vhost)['broker']['vhost'] == '/'
    assert default_vhost['queues'] == [dict(name=absent_default, exists=False, messages=0, unacked=0, consumers=0,
                                            priorities=None, source='amqp+management', type=None)]


def test_discovery_consumers_and_internal_queues(rabbit_env, ansible, workers):
    url = rabbit_env.url
    workers.start(url, 'disc1@fleet', ['alpha', 'beta'])
    publish(url, ADD, 'gamma', args=(1, 1), count=2)
    events = 'celeryev.' + uuid.uuid4().hex
    reply = '%s.reply.celery.pidbox' % uuid.uuid4()
    for name in (events, reply):
        management('PUT', '/api/queues/%s/%s' % (rabbit_env.qvhost, urllib.parse.quote(name, safe='')),
                   {'durable': False, 'auto_delete': False})
    pidbox = 'disc1@fleet.celery.pidbox'
    # Celery 5.7 declares the worker's pidbox queue exclusive: AMQP cannot even look at it, its
    # counts come from the management API, whose statistics lag.
    rabbit_env.wait_for(pidbox, lambda r: r.get('consumers') == 1)

    found, everything, purge_pidbox = ansible.play([
        info(broker_url=url),
        info(broker_url=url, include_internal=True, peek=1),
        change(broker_url=url, queues=[pidbox]),
    ])
    assert [(q['name'], q['exists'], q['messages'], q['consumers']) for q in ok(found)['queues']] == [
        ('alpha', True, 0, 1), ('beta', True, 0, 1), ('gamma', True, 2, 0)]
    assert [q['name'] for q in ok(everything)['queues']] == sorted(
        ['alpha', 'beta', 'gamma', pidbox, events, reply])
    queues = by_name(everything)
    assert (queues[pidbox]['exists'], queues[pidbox]['consumers'], queues[pidbox]['peek']) == (True, 1, [])
    assert (queues[events]['exists'], queues[events]['consumers'], queues[events]['messages']) == (True, 0, 0)
    assert len(queues['gamma']['peek']) == 1 and queues['gamma']['peek'][0]['task'] == ADD
    # Purging someone else's exclusive queue: the counts say there is nothing ready, so nothing to do.
    assert ok(purge_pidbox)['changed'] is False
    assert purge_pidbox['queues'] == [dict(name=pidbox, exists=True, before=0, removed=0, after=0, unacked=0, type='classic')]


def test_unacked_thresholds_and_management_fallback(rabbit_env, ansible, workers, not_management):
    url = rabbit_env.url
    worker = workers.start(url, 'hold1@fleet', ['held'], concurrency=1, prefetch=2)
    ids = publish(url, SLEEP, 'held', args=(120,), count=5)  # outlasts the test: counts stay put
    # One runs (acked when it starts), two are prefetched (unacked), two are ready.
    rabbit_env.wait_for('held', lambda r: (r.get('messages_unacknowledged'), r.get('messages_ready'),
                                           r.get('consumers')) == (2, 2, 1))
    assert rabbit_env.read_ids('held') == ids[3:]
    closed = closed_port()
    closed_url = 'http://127.0.0.1:%d' % closed

    plain, over, fallback, amqp_port, wrong_server, discover_down, purge = ansible.play([
        info(broker_url=url, queues=['held']),
        info(broker_url=url, queues=['held'], max_unacked=1),
        info(broker_url=url, queues=['held'], management_url=closed_url),
        # Flower's trap: the AMQP port is not the management port. A gate on unacked messages
        # must not pass when nobody can count them.
        info(broker_url=url, queues=['held'], management_url='http://127.0.0.1:%d' % AMQP_PORT, max_unacked=5),
        info(broker_url=url, queues=['held'], management_url=not_management),
        info(broker_url=url, management_url=closed_url),
        dict(change(broker_url=url, queues=['held']), diff=True),
    ])

    assert ok(plain)['queues'] == [dict(name='held', exists=True, messages=2, unacked=2, consumers=1,
                                        priorities=None, source='amqp+management', type='classic')]
    failed(over, "thresholds not met: queue 'held' has 2 unacked messages (max_unacked 1)")
    assert over['queues'][0]['unacked'] == 2

    failed(amqp_port, "queue 'held' has an unknown number of unacked messages", 'max_unacked 5')
    for result, endpoint in ((fallback, closed_url), (amqp_port, 'http://127.0.0.1:%d' % AMQP_PORT),
                             (wrong_server, not_management.rstrip('/'))):
        assert result['queues'] == [dict(name='held', exists=True, messages=2, unacked=None, consumers=1,
                                         priorities=None, source='amqp', type=None)], result
        assert result['management_error'].startswith('management API at %s: ' % endpoint), result
    assert 'Connection refused' in fallback['management_error']
    assert 'HTTP 404' in wrong_server['management_error']
    ok(fallback)
    ok(wrong_server)
    failed(discover_down, 'management API at %s: ' % closed_url)
    assert discover_down['option'] == 'management_url'

    # Purge: removes the two ready ones, reports the two held, removes none of them.
    ok(purge)
    assert purge['changed'] is True
    assert purge['queues'] == [dict(name='held', exists=True, before=2, removed=2, after=0, unacked=2, type='classic')]
    assert purge['diff'] == dict(before={'held': 2}, after={'held': 0})
    assert ["queue 'held' has 2 messages held unacknowledged by workers; they were not removed and will run"] == [
        w for w in purge.get('warnings', []) if 'held unacknowledged' in w]
    assert rabbit_env.read_ids('held') == []
    worker.kill()  # the broker gives the held messages back, in their places
    assert read_ids_eventually(rabbit_env, 'held', ids[1:3]) == ids[1:3]


def test_min_consumers_wait(rabbit_env, ansible, workers):
    url = rabbit_env.url
    publish(url, ADD, 'lonely', args=(1, 1))
    # The worker comes up while the module is already waiting for it.
    results = []
    play = threading.Thread(target=lambda: results.extend(ansible.play([
        info(broker_url=url, queues=['attach'], min_consumers=1, wait=True, wait_timeout=60, wait_sleep=0.2),
        info(broker_url=url, queues=['lonely'], min_consumers=1, wait=True, wait_timeout=1.5, wait_sleep=0.3),
    ])))
    play.start()
    try:
        assert module_connected(rabbit_env), 'the module never connected'
        time.sleep(0.5)
        workers.start(url, 'late1@fleet', ['attach'], ready=False)
    finally:
        play.join(120)
    attached, lonely = results
    ok(attached)
    assert (attached['queues'][0]['exists'], attached['queues'][0]['consumers']) == (True, 1)
    assert attached['waited'] > 0.5, attached
    failed(lonely, 'timed out after', '(wait_timeout)', "queue 'lonely' has 0 consumers (min_consumers 1)")
    assert (lonely['queues'][0]['messages'], lonely['queues'][0]['consumers']) == (1, 0)


# -- celery_queue ------------------------------------------------------------------------------

def bystanders(url):
    """Queues no test targets: priorities, two tasks, names like the targets'. Returns their names."""
    publish(url, ADD, 'keepme', args=(2, 2), count=3)
    publish(url, MAIL, 'keepme', args=('k',), count=2, priority=6)
    publish(url, MAIL, 'junk2', args=('j',), count=2)
    publish(url, MAIL, 'mixed.other', args=('o',), count=2, priority=3)
    return ['keepme', 'junk2', 'mixed.other']


def task_header(message):
    return message['properties']['headers']['task']


@pytest.mark.mitogen
def test_purge_check_real_idempotent_and_nothing_else_touched(rabbit_env, ansible):
    url = rabbit_env.url
    publish(url, ADD, 'junk', args=(1, 1), count=5)
    publish(url, MAIL, 'junk', args=('x',), count=3, priority=6)
    others = bystanders(url)
    before = rabbit_env.snapshot()
    assert len(before['junk']) == 8 and sorted(before) == sorted(others + ['junk'])

    check = ansible.module('celery_queue', dict(broker_url=url, queues=['junk']), check=True, diff=True)
    assert ok(check)['changed'] is True
    assert check['queues'] == [dict(name='junk', exists=True, before=8, removed=8, after=0, unacked=0, type='classic')]
    assert check['diff'] == dict(before={'junk': 8}, after={'junk': 0})
    assert rabbit_env.snapshot() == before  # every message, body and properties, in order

    real, again = ansible.play([
        dict(change(broker_url=url, queues=['junk', 'ghost']), diff=True),
        change(broker_url=url, queues=['junk']),
    ])
    assert ok(real)['changed'] is True
    assert real['queues'] == [dict(name='junk', exists=True, before=8, removed=8, after=0, unacked=0, type='classic'),
                              dict(name='ghost', exists=False, before=0, removed=0, after=0, unacked=0, type=None)]
    assert real['diff'] == dict(before={'junk': 8, 'ghost': 0}, after={'junk': 0, 'ghost': 0})
    assert not [w for w in real.get('warnings', []) if 'unacknowledged' in w]
    assert ok(again)['changed'] is False
    assert again['queues'] == [dict(name='junk', exists=True, before=0, removed=0, after=0, unacked=0, type='classic')]
    assert rabbit_env.snapshot() == dict(before, junk=[])  # 'ghost' was not created


def test_filtered_purge_keeps_the_rest_in_order(rabbit_env, ansible):
    url = rabbit_env.url
    for i in range(10):
        if i % 3 == 0:
            publish(url, MAIL, 'mixed', args=('m%d' % i,))
        else:
            publish(url, ADD, 'mixed', args=(i, i))
    publish(url, MAIL, 'mixed', args=('hi',), count=2, priority=3)
    publish(url, ADD, 'mixed', args=(7, 7), count=2, priority=5)
    bystanders(url)
    before = rabbit_env.snapshot()
    order = before['mixed']
    assert len(order) == 14 and [task_header(m) for m in order[:4]] == [ADD, ADD, MAIL, MAIL]  # priority first

    args = dict(broker_url=url, queues=['mixed'], task_names=[MAIL])
    check = ansible.module('celery_queue', args, check=True)
    assert ok(check)['changed'] is True
    assert check['queues'] == [dict(name='mixed', exists=True, before=14, removed=6, after=8, unacked=0, type='classic')]
    assert rabbit_env.snapshot() == before

    real, again = ansible.play([change(**args), change(**args)])
    assert ok(real)['changed'] is True
    assert real['queues'] == [dict(name='mixed', exists=True, before=14, removed=6, after=8, unacked=0, type='classic')]
    assert ok(again)['changed'] is False and again['queues'][0]['removed'] == 0
    # The kept messages are the same messages (body, headers, properties) in the same order.
    assert rabbit_env.snapshot() == dict(before, mixed=[m for m in order if task_header(m) != MAIL])


def test_trim_oldest_and_newest(rabbit_env, ansible):
    url = rabbit_env.url
    ids = publish(url, ADD, 'trimq', args=(1, 1), count=10)
    low = publish(url, ADD, 'pri', args=(1, 1), count=3)
    high = publish(url, MAIL, 'pri', args=('p',), count=3, priority=9)  # runs first on RabbitMQ
    publish(url, ADD, 'pri2', args=(1, 1), count=3)
    publish(url, MAIL, 'pri2', args=('p',), count=3, priority=9)
    bystanders(url)
    before = rabbit_env.snapshot()
    assert [m['properties']['headers']['id'] for m in before['trimq']] == ids
    assert [m['properties']['headers']['id'] for m in before['pri']] == high + low

    check = ansible.module('celery_queue', dict(broker_url=url, queues=['trimq'], state='trimmed', keep=6),
                           check=True)
    assert ok(check)['queues'] == [dict(name='trimq', exists=True, before=10, removed=4, after=6, unacked=0, type='classic')]
    assert rabbit_env.snapshot() == before

    oldest, newest, again, pri, pri2 = ansible.play([
        change(broker_url=url, queues=['trimq'], state='trimmed', keep=6),
        change(broker_url=url, queues=['trimq'], state='trimmed', keep=2, drop='newest'),
        change(broker_url=url, queues=['trimq'], state='trimmed', keep=2),
        change(broker_url=url, queues=['pri'], state='trimmed', keep=4, drop='oldest'),
        change(broker_url=url, queues=['pri2'], state='trimmed', keep=2, drop='newest'),
    ])
    assert ok(oldest)['queues'] == [dict(name='trimq', exists=True, before=10, removed=4, after=6, unacked=0, type='classic')]
    assert ok(newest)['queues'] == [dict(name='trimq', exists=True, before=6, removed=4, after=2, unacked=0, type='classic')]
    assert ok(again)['changed'] is False and again['queues'][0]['removed'] == 0
    # Run order is priority 9 first: "oldest" means "would run next".
    assert ok(pri)['queues'][0]['removed'] == 2
    assert ok(pri2)['queues'][0]['removed'] == 4
    assert rabbit_env.snapshot() == dict(before, trimq=before['trimq'][4:6], pri=before['pri'][2:],
                                         pri2=before['pri2'][:2])


# -- bad input ---------------------------------------------------------------------------------

def test_bad_input_fails_clearly(rabbit_env, ansible):
    vhost = rabbit_env.vhost
    qvhost = rabbit_env.qvhost
    missing_vhost = 'no-such-vhost-' + uuid.uuid4().hex[:8]
    closed = closed_port()
    cases = [
        (info(broker_url='amqp://guest:%s@127.0.0.1:%d/%s' % (SECRET, AMQP_PORT, qvhost), queues=['q']),
         ['authentication failed at amqp 127.0.0.1:%d vhost %s' % (AMQP_PORT, vhost), 'broker_password'],
         'broker_password'),
        (change(broker_url='amqp://guest@127.0.0.1:%d/%s' % (AMQP_PORT, qvhost), broker_password=SECRET,
                queues=['q']),
         ['authentication failed at amqp 127.0.0.1:%d vhost %s' % (AMQP_PORT, vhost)], 'broker_password'),
        (info(broker_url='amqp://guest:guest@127.0.0.1:%d/%s' % (AMQP_PORT, missing_vhost), queues=['q']),
         ["broker_url: access to vhost '%s' refused" % missing_vhost, 'does the vhost exist'], 'broker_url'),
        (info(broker_url='amqps://guest:guest@127.0.0.1:%d//' % AMQP_PORT, queues=['q'], connect_timeout=2),
         ['cannot connect to amqps 127.0.0.1:%d vhost /' % AMQP_PORT, 'TLS handshake failed',
          'does the port speak TLS?'], 'broker_url'),
        (info(broker_url='amqp://guest:guest@127.0.0.1:1//', queues=['q']),
         ['cannot connect to amqp 127.0.0.1:1 vhost /', 'Connection refused'], 'broker_url'),
        (change(broker_url='amqp://guest:guest@127.0.0.1:%d//' % closed, queues=['q']),
         ['cannot connect to amqp 127.0.0.1:%d vhost /' % closed], 'broker_url'),
        (info(broker_url='amqpx://guest:guest@127.0.0.1:%d//' % AMQP_PORT, queues=['q']),
         ["broker_url: unsupported scheme 'amqpx'"], 'broker_url'),
    ]
    tasks = [task for task, _expected, _option in cases]
    # A wrong management password is not fatal: AMQP still answers, the reason is reported.
    tasks.append(info(broker_url=rabbit_env.url, queues=['q'], management_password=SECRET))
    results = ansible.play(tasks, verbosity=4)
    output = ansible.last['stdout'] + ansible.last['stderr']
    assert SECRET not in output
    for (task, expected, option), result in zip(cases, results):
        failed(result, *expected)
        assert result.get('option') == option, result
    mgmt = ok(results[-1])
    assert mgmt['queues'][0]['source'] == 'amqp' and mgmt['queues'][0]['unacked'] is None
    assert 'HTTP 401 (check management_user and management_password)' in mgmt['management_error']
    # amqps:// to the plain port fails within connect_timeout (2 s) plus a second, not a hang. Ansible's own
    # per-task cost (seconds on a busy machine) is that of the task that fails before any network call.
    seconds = ansible.task_seconds()
    assert seconds[3] - seconds[6] < 2.0 + 1.0, seconds


def publish_backlog(url, queue, total):
    """``total`` messages in a new queue as Celery declares it: one in four MAIL, the rest ADD, ids big-0..."""
    import pika
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, arguments={'x-max-priority': 10})
        for i in range(total):
            task = MAIL if i % 4 == 0 else ADD
            channel.basic_publish('', queue, b'[[], {}, {}]', pika.BasicProperties(
                headers={'task': task, 'id': 'big-%d' % i}, content_type='application/json'))
    finally:
        connection.close()


def read_whole(rabbit_env, ansible, url, total, connect_timeout):
    """A breakdown of 'big' counts all ``total`` messages, and a trim keeps the 5 that run first."""
    counted, trimmed = ansible.play([
        info(broker_url=url, queues=['big'], breakdown=True, connect_timeout=connect_timeout),
        change(broker_url=url, queues=['big'], state='trimmed', keep=5, drop='newest', connect_timeout=connect_timeout),
    ])
    assert ok(counted)['queues'][0]['tasks'] == {MAIL: total // 4, ADD: total - total // 4}
    # unacked comes from the management API, whose statistics lag: they may still show the breakdown's read.
    assert [dict(q, unacked=None) for q in ok(trimmed)['queues']] == [
        dict(name='big', exists=True, before=total, removed=total - 5, after=5, unacked=None, type='classic')]
    assert rabbit_env.read_ids('big') == ['big-%d' % i for i in range(5)]


def through_proxy(rabbit_env, private):
    """(proxy, the vhost's URL through it): a StallingProxy in front of the shared broker."""
    proxy = private.proxy(urllib.parse.urlsplit(rabbit_env.url).port)
    return proxy, rabbit_env.url.replace(':%d/' % proxy.target_port, ':%d/' % proxy.port)


def test_large_backlog_is_read_whole(rabbit_env, ansible, private):
    """A backlog that takes the client longer to receive than any single call may take: counted and
    trimmed exactly, not cut short by a clock (a partial read made trim drop the wrong messages)."""
    total = 20000   # about 3.4 MB: over a link of 1 MB/s each read takes more than 3 s, connect_timeout is 2
    publish_backlog(rabbit_env.url, 'big', total)
    proxy, url = through_proxy(rabbit_env, private)
    proxy.throttle(1000000)
    read_whole(rabbit_env, ansible, url, total, connect_timeout=2)
    assert all(seconds > 3 for seconds in ansible.task_seconds()), ansible.task_seconds()


def test_deliveries_held_up_on_their_way_are_still_read(rabbit_env, ansible, private):
    """RabbitMQ has handed out the whole backlog (none ready) while most of it is still on its way
    to the module: held up in the network here, in the broker's own channel process on a loaded
    machine. 'None ready' is not the end of the read then: ending it there made a breakdown short
    and a trim pick from part of the queue."""
    total = 3000   # about 1 MB: all of it fits in the sockets' buffers while the proxy holds it
    publish_backlog(rabbit_env.url, 'big', total)
    proxy, url = through_proxy(rabbit_env, private)
    proxy.pause_after(30000, 2.5)   # each connection: the handshake, a few hundred messages, then 2.5 s of nothing
    read_whole(rabbit_env, ansible, url, total, connect_timeout=5)


def test_a_queue_another_consumer_holds_alone_fails_the_read_clearly(rabbit_env, ansible):
    """With x-single-active-consumer RabbitMQ delivers to one consumer only. While a worker is that one,
    the module's consumer gets nothing: a breakdown or a trim says so soon after connect_timeout, and
    removes nothing, instead of counting nothing or waiting for ever."""
    import pika
    connection = pika.BlockingConnection(pika.URLParameters(rabbit_env.url))
    try:
        channel = connection.channel()
        channel.queue_declare('sac', durable=True, arguments={'x-single-active-consumer': True})
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume('sac', lambda *delivery: None)   # the active consumer: holds one, never acks
        for i in range(10):
            channel.basic_publish('', 'sac', b'[[], {}, {}]', pika.BasicProperties(
                headers={'task': ADD, 'id': 'sac-%d' % i}, content_type='application/json'))
        connection.process_data_events(1)
        results = ansible.play([
            info(broker_url=rabbit_env.url, queues=['sac'], breakdown=True, connect_timeout=2),
            change(broker_url=rabbit_env.url, queues=['sac'], state='trimmed', keep=2, connect_timeout=2),
        ])
    finally:
        connection.close()
    for result in results:
        failed(result, "queue 'sac': received 0 of 9 messages", 'single active consumer of the queue?')
        assert result['option'] == 'connect_timeout', result
    assert 'trimmed before the failure: none' in results[1]['msg'], results[1]['msg']
    # A quiet second shows the silence, then connect_timeout (2 s): the messages above say so. Waiting on a
    # consumer that never lets go would never end; the bound only tells that apart, whatever the machine's load.
    assert all(seconds < 30 for seconds in ansible.task_seconds()), ansible.task_seconds()
    assert read_ids_eventually(rabbit_env, 'sac', ['sac-%d' % i for i in range(10)]) == ['sac-%d' % i for i in range(10)]


def test_a_read_whose_broker_goes_silent_mid_way_fails_soon_after(rabbit_env, ansible, private):
    """Waiting on silence, not on a clock, must still end: a broker that stops sending in the middle of a
    read fails the task about a quiet second plus connect_timeout later, and nothing is removed."""
    total = 3000
    publish_backlog(rabbit_env.url, 'big', total)
    everything = ['big-%d' % i for i in range(total)]
    for task, args in ((info, dict(breakdown=True)), (change, dict(state='trimmed', keep=5))):
        proxy, url = through_proxy(rabbit_env, private)
        proxy.pause_after(30000, 120)   # a few hundred messages, then nothing for longer than the test
        result, = ansible.play([task(broker_url=url, queues=['big'], connect_timeout=2, **args)])
        failed(result, 'timed out after 2.5s', 'amqp 127.0.0.1:%d' % proxy.port)
        # A quiet second, then 2.5 s without a byte (the message says so); the bound only tells that apart from
        # waiting out the proxy's 120 s pause, whatever the machine's load.
        assert ansible.task_seconds()[0] < 60, (task.__name__, ansible.task_seconds())
        proxy.close()   # the broker sees the connection go and puts back what it held
        assert read_ids_eventually(rabbit_env, 'big', everything) == everything
