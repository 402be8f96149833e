"""Brokers of a test's own, for tests that must restart, stall, alarm or TLS-wrap them.

The shared Redis and RabbitMQ serve every other test running in parallel: faults are never
injected there. These are throwaway processes on free loopback ports, in a temporary
directory, stopped (and their files removed) when the test ends.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

from harness import free_port

RABBIT_BIN = '/usr/lib/rabbitmq/bin'


def wait_port(port, timeout=60, what='a server'):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError('%s did not listen on 127.0.0.1:%d within %ss' % (what, port, timeout))


# -- TLS -------------------------------------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run(('openssl',) + args, cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tls(directory):
    """A CA of the test's own, a server certificate for 127.0.0.1/localhost and a client
    certificate signed by it, plus a second, unrelated CA (the "wrong CA"). Returns paths."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, 'san.ext'), 'w') as handle:
        handle.write('subjectAltName=IP:127.0.0.1,DNS:localhost\n')
    for ca in ('ca', 'wrong-ca'):
        _openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', ca + '.key', '-out', ca + '.pem',
                 '-days', '2', '-subj', '/CN=celeryops test %s' % ca, cwd=directory)
    for name in ('server', 'client'):
        _openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', name + '.key', '-out', name + '.csr',
                 '-subj', '/CN=localhost', cwd=directory)
        _openssl('x509', '-req', '-in', name + '.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
                 '-out', name + '.pem', '-days', '2', '-extfile', 'san.ext', cwd=directory)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o644)  # the RabbitMQ node may read them as another user
    files = dict(ca='ca.pem', wrong_ca='wrong-ca.pem', server_cert='server.pem', server_key='server.key',
                 client_cert='client.pem', client_key='client.key')
    return {key: os.path.join(directory, name) for key, name in files.items()}


# -- Redis -----------------------------------------------------------------------------------

class PrivateRedis(object):
    """A redis-server of the test's own; with ``tls`` (from make_tls) it listens on a TLS port
    only, so a plaintext client has nothing to fall back to. With ``persist`` every write is in
    an append-only file fsynced before the reply, so the data survives a SIGKILL and restart;
    with ``password`` clients must authenticate (url does not carry it)."""

    def __init__(self, directory, tls=None, persist=False, password=None):
        self.directory = directory
        self.tls = tls
        self.persist = persist
        self.password = password
        self.port = free_port()
        os.makedirs(directory, exist_ok=True)
        self.process = None
        scheme = 'rediss' if tls else 'redis'
        self.url = '%s://127.0.0.1:%d/0' % (scheme, self.port)

    def argv(self):
        argv = ['redis-server', '--bind', '127.0.0.1', '--save', '', '--dir', self.directory,
                '--logfile', os.path.join(self.directory, 'redis.log')]
        argv += ['--appendonly', 'yes', '--appendfsync', 'always'] if self.persist else ['--appendonly', 'no']
        if self.password:
            argv += ['--requirepass', self.password]
        if self.tls:
            argv += ['--port', '0', '--tls-port', str(self.port), '--tls-cert-file', self.tls['server_cert'],
                     '--tls-key-file', self.tls['server_key'], '--tls-ca-cert-file', self.tls['ca'],
                     '--tls-auth-clients', 'optional']
        else:
            argv += ['--port', str(self.port)]
        return argv

    def start(self):
        self.process = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_port(self.port, 30, 'redis-server')
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, down_for=0.0):
        """Kill and start again on the same port (the data is gone unless ``persist``)."""
        self.stop()
        time.sleep(down_for)
        return self.start()

    def pause(self):
        """SIGSTOP: the port still accepts TCP connections, nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.process.pid, signal.SIGCONT)

    def client(self):
        import redis
        kwargs = dict(host='127.0.0.1', port=self.port, socket_timeout=10, password=self.password)
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=self.tls['ca'])
        return redis.Redis(**kwargs)


# -- RabbitMQ --------------------------------------------------------------------------------

class PrivateRabbit(object):
    """A second RabbitMQ node (own node name, ports, Mnesia and cookie) beside the shared one.

    No plugins: the management API is not there, as on many production brokers. With ``tls``
    it also listens for AMQPS on ``tls_port`` (the CA verifies client certificates when sent).
    """

    def __init__(self, directory, tls=None):
        self.directory = directory
        self.tls = tls
        self.node = 'celeryops-%s@localhost' % uuid.uuid4().hex[:8]
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.dist_port = free_port()
        self.url = 'amqp://guest:guest@127.0.0.1:%d/%%2F' % self.port
        self.tls_url = 'amqps://guest:guest@127.0.0.1:%d/%%2F' % self.tls_port if tls else None
        home = os.path.join(directory, 'home')
        os.makedirs(home, exist_ok=True)
        cookie = os.path.join(home, '.erlang.cookie')
        with open(cookie, 'w') as handle:
            handle.write(uuid.uuid4().hex.upper())
        os.chmod(cookie, 0o400)
        lines = ['listeners.tcp.default = 127.0.0.1:%d' % self.port, 'loopback_users = none']
        if tls:
            lines += ['listeners.ssl.default = 127.0.0.1:%d' % self.tls_port,
                      'ssl_options.cacertfile = %s' % tls['ca'],
                      'ssl_options.certfile = %s' % tls['server_cert'],
                      'ssl_options.keyfile = %s' % tls['server_key'],
                      'ssl_options.verify = verify_peer',
                      'ssl_options.fail_if_no_peer_cert = false']
        self._write('rabbitmq.conf', '\n'.join(lines) + '\n')
        self._write('enabled_plugins', '[].\n')
        self._write('rabbitmq-env.conf', '')
        self.env = dict(os.environ, HOME=home, ERL_EPMD_ADDRESS='127.0.0.1', RABBITMQ_NODENAME=self.node,
                        RABBITMQ_CONF_ENV_FILE=os.path.join(directory, 'rabbitmq-env.conf'),
                        RABBITMQ_CONFIG_FILE=os.path.join(directory, 'rabbitmq.conf'),
                        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(directory, 'enabled_plugins'),
                        RABBITMQ_MNESIA_BASE=os.path.join(directory, 'mnesia'),
                        RABBITMQ_LOG_BASE=os.path.join(directory, 'log'),
                        RABBITMQ_PID_FILE=os.path.join(directory, 'rabbit.pid'),
                        RABBITMQ_DIST_PORT=str(self.dist_port))

    def _write(self, name, text):
        with open(os.path.join(self.directory, name), 'w') as handle:
            handle.write(text)

    def ctl(self, *args, timeout=60):
        return subprocess.run([os.path.join(RABBIT_BIN, 'rabbitmqctl'), '-n', self.node] + list(args),
                              env=self.env, capture_output=True, text=True, timeout=timeout, check=True).stdout

    def start(self):
        subprocess.run([os.path.join(RABBIT_BIN, 'rabbitmq-server'), '-detached'], env=self.env,
                       capture_output=True, timeout=60, check=False)
        wait_port(self.port, 90, 'RabbitMQ node %s' % self.node)
        if self.tls_port:
            wait_port(self.tls_port, 30, 'RabbitMQ TLS listener')
        return self

    def stop(self):
        try:
            self.ctl('stop', timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self):
        """SIGKILL the node's Erlang VM (found by its pid file)."""
        try:
            with open(self.env['RABBITMQ_PID_FILE']) as handle:
                os.kill(int(handle.read().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def restart(self):
        self.stop()
        return self.start()

    def memory_alarm(self, on):
        """Raise (on) or clear the memory alarm: publishers' connections get blocked."""
        self.ctl('set_vm_memory_high_watermark', *(['absolute', '1'] if on else ['0.4']))

    def cleanup(self):
        self.stop()
        shutil.rmtree(os.path.join(self.directory, 'mnesia'), ignore_errors=True)


# -- a TCP proxy that can stop answering -----------------------------------------------------

class StallingProxy(object):
    """Forwards 127.0.0.1:port to a target port until ``stall()``: then connections (old and
    new) stay open and accepted, but no byte goes either way: a broker that hangs (or, with
    ``pause_after``, one that holds up each connection for a while; with ``throttle``, a slow link)."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.stalled = threading.Event()
        self.closing = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        self.pause = None
        self.rate = None
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def stall(self):
        self.stalled.set()

    def pause_after(self, downstream_bytes, seconds):
        """From now on, each connection stalls once for ``seconds`` after this many bytes came back
        from the target: a network (or broker) that holds up a stream of deliveries mid-way."""
        self.pause = (downstream_bytes, seconds)

    def throttle(self, bytes_per_second):
        """From now on, what comes back from the target flows at about this rate: a slow link."""
        self.rate = bytes_per_second

    def resume(self):
        self.stalled.clear()

    def _accept(self):
        while not self.closing.is_set():
            try:
                client, _address = self.listener.accept()
            except OSError:
                continue
            self.sockets.append(client)
            if self.stalled.is_set():
                continue  # accepted and never answered
            try:
                upstream = socket.create_connection(('127.0.0.1', self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            self.sockets.append(upstream)
            held = threading.Event()   # this connection's pause (pause_after), both ways
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, held, source is upstream), daemon=True).start()

    def _pump(self, source, sink, held, downstream):
        source.settimeout(0.2)
        forwarded = 0
        pause = self.pause if downstream else None
        while not self.closing.is_set():
            if pause and forwarded >= pause[0]:
                held.set()
                timer = threading.Timer(pause[1], held.clear)
                timer.daemon = True
                timer.start()
                pause = None
            if self.stalled.is_set() or held.is_set():
                time.sleep(0.05)
                continue
            try:
                data = source.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                sink.sendall(data)
            except OSError:
                break
            forwarded += len(data)
            if downstream and self.rate:
                time.sleep(len(data) / self.rate)
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.closing.set()
        self.thread.join(5)
        for sock in self.sockets + [self.listener]:
            try:
                sock.close()
            except OSError:
                pass


# -- Redis Sentinel --------------------------------------------------------------------------

class PrivateSentinelSet(object):
    """A Redis master, one replica and three Sentinels watching them as ``master_name``, all of the test's own
    on free loopback ports in ``directory``, stopped by pid (stop()). The master and the replica want
    ``password``, the Sentinels ``sentinel_password``. The Sentinels fail over 1 s after the master stops
    answering (quorum 2): kill_master() and wait_failover() for a failover on demand."""

    def __init__(self, directory, master_name='fleetmaster', password=None, sentinel_password=None, tls=None,
                 replicas=1, sentinels=3):
        """``tls`` (from make_tls): the master and replica listen on a TLS port only, the Sentinels reach them
        over TLS and listen in plaintext themselves (as kombu reaches them)."""
        self.directory = directory
        self.tls = tls
        self.replica_count = replicas
        self.sentinel_count = sentinels
        self.master_name = master_name
        self.password = password or 'master-pw-%s' % uuid.uuid4().hex[:12]
        self.sentinel_password = sentinel_password or 'sentinel-pw-%s' % uuid.uuid4().hex[:12]
        os.makedirs(directory, exist_ok=True)
        self.redis = {}       # port -> Popen of the master and the replica
        self.sentinels = {}   # port -> Popen
        self.first_master = None

    def _redis_argv(self, port, replica_of=None):
        argv = ['redis-server', '--bind', '127.0.0.1', '--port', str(port), '--save', '', '--appendonly', 'no',
                '--dir', self.directory, '--logfile', os.path.join(self.directory, 'redis-%d.log' % port),
                '--requirepass', self.password, '--masterauth', self.password]
        if self.tls:
            argv[argv.index('--port') + 1] = '0'
            argv += ['--tls-port', str(port)] + self._tls_args()
        if replica_of:
            argv += ['--replicaof', '127.0.0.1', str(replica_of)]
        return argv

    def _tls_args(self):
        return ['--tls-cert-file', self.tls['server_cert'], '--tls-key-file', self.tls['server_key'],
                '--tls-ca-cert-file', self.tls['ca'], '--tls-auth-clients', 'optional', '--tls-replication', 'yes']

    def _spawn(self, argv):
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self):
        master, replica = free_port(), free_port()
        self.first_master = master
        self.redis[master] = self._spawn(self._redis_argv(master))
        wait_port(master, 30, 'the Redis master')
        if self.replica_count:
            self.redis[replica] = self._spawn(self._redis_argv(replica, replica_of=master))
            wait_port(replica, 30, 'the Redis replica')
        quorum = 2 if self.sentinel_count > 1 else 1
        for _index in range(self.sentinel_count):
            port = free_port()
            path = os.path.join(self.directory, 'sentinel-%d.conf' % port)
            with open(path, 'w') as handle:   # a Sentinel rewrites its own file: one each
                handle.write('\n'.join([
                    'port %d' % port, 'bind 127.0.0.1', 'dir %s' % self.directory,
                    'logfile %s' % os.path.join(self.directory, 'sentinel-%d.log' % port),
                    'requirepass %s' % self.sentinel_password, 'sentinel sentinel-pass %s' % self.sentinel_password,
                    'sentinel monitor %s 127.0.0.1 %d %d' % (self.master_name, master, quorum),
                    'sentinel auth-pass %s %s' % (self.master_name, self.password),
                    'sentinel down-after-milliseconds %s 1000' % self.master_name,
                    'sentinel failover-timeout %s 5000' % self.master_name,
                    'sentinel parallel-syncs %s 1' % self.master_name, '']))
                if self.tls:   # TLS to the master and replica (tls-replication), plaintext to clients
                    args = self._tls_args()
                    handle.write(''.join('%s %s\n' % (name.lstrip('-'), value) for name, value in zip(args[::2], args[1::2])))
            self.sentinels[port] = self._spawn(['redis-server', path, '--sentinel'])
            wait_port(port, 30, 'a Sentinel')
        # Every Sentinel knows the replica and the other Sentinels before a test relies on a failover.
        self._wait(lambda: all(info.get('num-slaves', 0) >= self.replica_count and not info.get('is_sdown', True)
                               and info.get('num-other-sentinels', 0) >= self.sentinel_count - 1
                               for info in self._masters_seen()), 60, 'the Sentinels to see the replica and each other')
        return self

    def sentinel_client(self, port):
        import redis
        return redis.Redis(host='127.0.0.1', port=port, password=self.sentinel_password, socket_timeout=5)

    def _masters_seen(self):
        seen = []
        for port in self.sentinels:
            try:
                client = self.sentinel_client(port)
                seen.append(client.sentinel_master(self.master_name))
                client.close()
            except Exception:  # a Sentinel starting up: not seen yet
                seen.append({})
        return seen

    @staticmethod
    def _wait(probe, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return
            time.sleep(0.2)
        raise AssertionError('timed out waiting for %s' % what)

    def master_port(self):
        """The master's port as the Sentinels see it (they agree)."""
        ports = set(int(info['port']) for info in self._masters_seen() if info)
        assert len(ports) == 1, 'the Sentinels disagree on the master: %s' % ports
        return ports.pop()

    def url(self, db=0, with_password=True, sentinels=None):
        """The sentinel:// URL list, as Celery writes it (the master's password in the first URL)."""
        ports = sentinels or list(self.sentinels)
        auth = ':%s@' % self.password if with_password else ''
        return ';'.join('sentinel://%s127.0.0.1:%d/%d' % (auth if index == 0 else '', port, db)
                        for index, port in enumerate(ports))

    def master_client(self, db=0):
        import redis
        kwargs = dict(ssl=True, ssl_ca_certs=self.tls['ca']) if self.tls else {}
        return redis.Redis(host='127.0.0.1', port=self.master_port(), db=db, password=self.password, socket_timeout=10,
                           **kwargs)

    def kill_master(self):
        """SIGKILL the master by pid; returns its port."""
        port = self.master_port()
        process = self.redis[port]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        return port

    def wait_failover(self, old_port, timeout=60):
        """Until every Sentinel names a master other than ``old_port`` that answers as a master."""
        def moved():
            ports = set(int(info.get('port', old_port)) for info in self._masters_seen())
            if len(ports) != 1 or old_port in ports:
                return False
            import redis
            kwargs = dict(ssl=True, ssl_ca_certs=self.tls['ca']) if self.tls else {}
            try:
                client = redis.Redis(host='127.0.0.1', port=ports.pop(), password=self.password, socket_timeout=2, **kwargs)
                return client.info('replication')['role'] == 'master'
            except redis.RedisError:
                return False
        self._wait(moved, timeout, 'a Sentinel failover away from port %d' % old_port)

    def restart_as_replica(self, port, timeout=60):
        """Start a killed server again on its port as a replica of the current master, and wait until every
        Sentinel sees it up and in sync: the set can fail over again."""
        self.redis[port] = self._spawn(self._redis_argv(port, replica_of=self.master_port()))
        wait_port(port, 30, 'the restarted Redis')

        def synced():
            for sentinel_port in self.sentinels:
                try:
                    client = self.sentinel_client(sentinel_port)
                    replicas = client.sentinel_slaves(self.master_name)
                    client.close()
                except Exception:  # a Sentinel busy with the failover: not yet
                    return False
                if not any(int(r['port']) == port and not r['is_sdown'] and r.get('master-link-status') == 'ok'
                           for r in replicas):
                    return False
            return True
        self._wait(synced, timeout, 'the Sentinels to see the restarted Redis as an up-to-date replica')

    def stop(self):
        for process in list(self.sentinels.values()) + list(self.redis.values()):
            if process.poll() is None:
                process.kill()
                process.wait(10)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# -- a RabbitMQ cluster ----------------------------------------------------------------------

class _ClusterNode(PrivateRabbit):
    """One node of a PrivateRabbitCluster: a PrivateRabbit with the management plugin on a port of its own and the
    cluster's HOME (its one Erlang cookie), so that the nodes and rabbitmqctl of each can talk to each other."""

    def __init__(self, directory, name, home):
        super(_ClusterNode, self).__init__(directory)
        self.node = '%s@localhost' % name
        self.management_port = free_port()
        self.management_url = 'http://127.0.0.1:%d' % self.management_port
        self.url = 'amqp://guest:guest@127.0.0.1:%d/%%2F' % self.port
        self._write('rabbitmq.conf', '\n'.join([
            'listeners.tcp.default = 127.0.0.1:%d' % self.port, 'loopback_users = none',
            'management.tcp.ip = 127.0.0.1', 'management.tcp.port = %d' % self.management_port,
            # The statistics the API shows (ready, unacked) are sampled every 5 s by default.
            'collect_statistics_interval = 1000', '']))
        self._write('enabled_plugins', '[rabbitmq_management].\n')
        shutil.rmtree(os.path.join(directory, 'home'), ignore_errors=True)   # the cookie PrivateRabbit made
        self.env.update(HOME=home, RABBITMQ_NODENAME=self.node)

    def launch(self):
        """rabbitmq-server -detached, not waiting for the node (the cluster starts its nodes side by side)."""
        subprocess.run([os.path.join(RABBIT_BIN, 'rabbitmq-server'), '-detached'], env=self.env,
                       capture_output=True, timeout=60, check=False)

    def wait_up(self, timeout=120):
        wait_port(self.port, timeout, 'RabbitMQ node %s' % self.node)
        wait_port(self.management_port, timeout, 'the management API of %s' % self.node)
        return self

    def start(self):
        self.launch()
        return self.wait_up()

    def plugins(self, *args):
        """rabbitmq-plugins on this node (and its own enabled_plugins file)."""
        return subprocess.run([os.path.join(RABBIT_BIN, 'rabbitmq-plugins'), '-n', self.node] + list(args),
                              env=self.env, capture_output=True, text=True, timeout=120, check=True).stdout


class PrivateRabbitCluster(object):
    """Three RabbitMQ nodes of a test module's own on loopback (node names cof-a-<id>@localhost, ...; their own
    AMQP, management and distribution ports, data and log directories), one Erlang cookie in a HOME of the
    cluster's own, joined into one cluster with rabbitmqctl join_cluster. ``nodes`` A, B, C in order; stop() stops
    each by rabbitmqctl stop, or its pid. The machine's own node and cookie are not touched."""

    def __init__(self, directory, size=3):
        self.directory = directory
        home = os.path.join(directory, 'home')
        os.makedirs(home, exist_ok=True)
        cookie = os.path.join(home, '.erlang.cookie')
        with open(cookie, 'w') as handle:
            handle.write(uuid.uuid4().hex.upper())
        os.chmod(cookie, 0o400)
        suffix = uuid.uuid4().hex[:6]
        self.nodes = []
        for letter in 'abc'[:size]:
            path = os.path.join(directory, letter)
            os.makedirs(path, exist_ok=True)
            self.nodes.append(_ClusterNode(path, 'cof-%s-%s' % (letter, suffix), home))

    def start(self):
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_up()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl('stop_app')
            node.ctl('join_cluster', first.node)
            node.ctl('start_app')
        self.wait_running(self.nodes)
        return self

    def running(self):
        """The node names the cluster says are running, as the first node that answers sees them."""
        for node in self.nodes:
            try:
                return set(json.loads(node.ctl('cluster_status', '--formatter', 'json', timeout=30))['running_nodes'])
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError, KeyError):
                continue
        return set()

    def wait_running(self, nodes, timeout=120):
        """Until exactly ``nodes`` are running in the cluster, each with its AMQP and management ports open."""
        want = set(node.node for node in nodes)
        deadline = time.monotonic() + timeout
        while self.running() != want:
            if time.monotonic() > deadline:
                raise AssertionError('the cluster runs %s, not %s' % (sorted(self.running()), sorted(want)))
            time.sleep(1)
        for node in nodes:
            node.wait_up(timeout)

    def stop_node(self, node):
        """Stop one node's Erlang VM (rabbitmqctl stop, or SIGKILL by pid); it stays a member of the cluster."""
        node.stop()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(('127.0.0.1', node.port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.2)
        node.kill()

    def start_node(self, node):
        """Start a stopped node again: it rejoins the cluster it left."""
        node.start()
        running = self.running()
        self.wait_running([n for n in self.nodes if n is node or n.node in running])

    def stop(self):
        for node in self.nodes:
            node.stop()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
