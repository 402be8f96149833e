"""Brokers of a test's own, for tests that must restart, stall, alarm or TLS-wrap them.

The shared Redis and RabbitMQ serve every other test running in parallel: faults are never
injected there. These are throwaway processes on free loopback ports, in a temporary
directory, stopped (and their files removed) when the test ends.
"""

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
