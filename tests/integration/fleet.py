"""A fleet of three hosts for the playbook tests: this machine, and two more reached over real SSH.

The two SSH hosts are sshd processes of the harness's own, listening on 127.0.0.2 and 127.0.0.3 with their
own configuration, host keys and authorized_keys in a temporary directory; root logs in with a generated
key, and the host keys are pinned in a known_hosts file of the harness's own. No system sshd is used or
changed. Every host gets its own supervisor root (supervisord, its socket, logs and programs); the
virtualenv is the same path on every host since they share the machine.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from harness import free_port

SSHD = '/usr/sbin/sshd'
VENV = sys.prefix
SUPERVISORCTL = os.path.join(VENV, 'bin', 'supervisorctl')
SSH_ADDRESSES = ('127.0.0.2', '127.0.0.3')


def keygen(path):
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'celeryops-fleet-test', '-f', path],
                   check=True, capture_output=True, timeout=30)
    with open(path + '.pub') as handle:
        return handle.read().split()[:2]  # key type, base64 key


class Sshd(object):
    """One sshd of our own on ADDRESS:port, root login with the fleet's key only."""

    def __init__(self, base, address, client_public_key):
        self.address = address
        self.port = free_port(address)
        self.dir = os.path.join(base, 'sshd-' + address)
        os.makedirs(self.dir)
        self.host_key = keygen(os.path.join(self.dir, 'host_key'))
        authorized = os.path.join(self.dir, 'authorized_keys')
        with open(authorized, 'w') as handle:
            handle.write(' '.join(client_public_key) + '\n')
        self.config = os.path.join(self.dir, 'sshd_config')
        with open(self.config, 'w') as handle:
            handle.write('\n'.join([
                'ListenAddress %s:%d' % (address, self.port),
                'HostKey %s' % os.path.join(self.dir, 'host_key'),
                'PidFile %s' % os.path.join(self.dir, 'sshd.pid'),
                'AuthorizedKeysFile %s' % authorized,
                'PermitRootLogin prohibit-password',
                'PubkeyAuthentication yes',
                'PasswordAuthentication no',
                'KbdInteractiveAuthentication no',
                'UsePAM no',
                'UseDNS no',
                # The key files live under /tmp, which StrictModes would refuse (world-writable parent).
                'StrictModes no',
                'PrintMotd no',
                'MaxSessions 50',
                'MaxStartups 50:30:100',
                'Subsystem sftp internal-sftp',
                'LogLevel ERROR',
            ]) + '\n')
        # sshd insists on its privilege separation directory (a Debian package would create it).
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)
        self.log = open(os.path.join(self.dir, 'sshd.log'), 'w')
        self.process = subprocess.Popen([SSHD, '-D', '-e', '-f', self.config], stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((address, self.port), timeout=2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError('sshd on %s:%d did not start:\n%s'
                                         % (address, self.port, open(self.log.name).read()))
                time.sleep(0.1)

    def known_hosts_line(self):
        return '[%s]:%d %s\n' % (self.address, self.port, ' '.join(self.host_key))

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


class Fleet(object):
    """Three inventory hosts (fleet1 local, fleet2 and fleet3 over SSH) and ansible-playbook runs against them."""

    def __init__(self, broker_url, app_dir):
        if not os.access(SSHD, os.X_OK):
            raise AssertionError('%s is missing: scripts/test installs openssh-server (ensure_sshd)' % SSHD)
        self.broker_url = broker_url
        self.app_dir = app_dir
        # Short: supervisord's unix socket lives below it.
        self.base = tempfile.mkdtemp(prefix='cof-fleet-', dir='/tmp')
        self.key = os.path.join(self.base, 'id_ed25519')
        public = keygen(self.key)
        self.sshds = {}
        self.known_hosts = os.path.join(self.base, 'known_hosts')
        try:
            for host, address in zip(('fleet2', 'fleet3'), SSH_ADDRESSES):
                self.sshds[host] = Sshd(self.base, address, public)
        except Exception:
            self.close()
            raise
        with open(self.known_hosts, 'w') as handle:
            handle.writelines(sshd.known_hosts_line() for sshd in self.sshds.values())
        self.hosts = ['fleet1'] + list(self.sshds)
        self.record_file = os.path.join(self.base, 'executed.txt')
        open(self.record_file, 'w').close()
        self.last = None

    # -- inventory -----------------------------------------------------------------------------

    def root(self, host):
        return os.path.join(self.base, host)

    def workers(self, host):
        """Two worker programs per host; alpha and beta queues are each consumed on every host."""
        common = dict(app='fleet_tasks', pool='threads', concurrency=2, workdir=self.app_dir, virtualenv=VENV,
                      environment={'FLEET_RECORD_FILE': self.record_file}, time_limit=60)
        return [dict(common, name='alpha', queues=['fleet_alpha']),
                dict(common, name='beta', queues=['fleet_beta', 'fleet_shared'])]

    def host_vars(self, host):
        # The fleet's workers run as root (beside sshd on loopback hosts): not what these tests are about.
        out = dict(ansible_python_interpreter=sys.executable, celery_workers=self.workers(host), worker_allow_root=True,
                   supervisor_install_method='pip', supervisor_pip_virtualenv=VENV,
                   supervisor_start_method='direct', supervisor_root=self.root(host))
        if host in self.sshds:
            sshd = self.sshds[host]
            out.update(ansible_host=sshd.address, ansible_port=sshd.port, ansible_user='root',
                       ansible_ssh_private_key_file=self.key,
                       ansible_ssh_common_args='-o UserKnownHostsFile=%s -o GlobalKnownHostsFile=/dev/null '
                                               '-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'
                                               % self.known_hosts)
        else:
            out.update(ansible_connection='local')
        return out

    def nodes(self, host=None):
        return ['%s@%s' % (worker['name'], h) for h in ([host] if host else self.hosts) for worker in self.workers(h)]

    def inventory(self, overrides=None, extra_hosts=None):
        """Write an inventory: group `workers` with the fleet (host vars updated from overrides)."""
        hosts = dict((host, dict(self.host_vars(host), **(overrides or {}).get(host, {}))) for host in self.hosts)
        hosts.update(extra_hosts or {})
        inventory = {'all': {'vars': {'celery_broker_url': self.broker_url},
                             'children': {'workers': {'hosts': hosts}}}}
        path = os.path.join(self.base, 'inventory-%d.json' % (time.monotonic() * 1e6))
        with open(path, 'w') as handle:
            json.dump(inventory, handle)
        return path

    # -- running -------------------------------------------------------------------------------

    def env(self):
        return dict(os.environ, ANSIBLE_STDOUT_CALLBACK='ansible.posix.json', ANSIBLE_NOCOLOR='1',
                    ANSIBLE_DEPRECATION_WARNINGS='false', ANSIBLE_LOCALHOST_WARNING='false',
                    ANSIBLE_PIPELINING='true', ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(self.base, 'cp'),
                    ANSIBLE_PYTHON_INTERPRETER=sys.executable)

    def playbook(self, playbook, extra_vars=None, inventory=None, limit=None, check=False, timeout=600):
        """ansible-playbook PLAYBOOK (a file or a collection playbook name); returns the JSON report."""
        argv = ['ansible-playbook', '-i', inventory or self.inventory(), playbook]
        if extra_vars:
            argv += ['-e', json.dumps(extra_vars)]
        if limit:
            argv += ['--limit', limit]
        if check:
            argv.append('--check')
        started = time.monotonic()
        proc = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False)
        self.last = proc
        self.last.seconds = time.monotonic() - started
        try:
            return Report(json.loads(proc.stdout), proc.returncode)
        except ValueError:
            raise AssertionError('no JSON from ansible-playbook (rc %s):\n%s\n%s'
                                 % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))

    def deploy(self, play_extra=None, **kwargs):
        """The supervisor and worker roles on every host (and whatever plays follow)."""
        plays = [dict(name='Deploy the fleet', hosts='workers', gather_facts=False,
                      roles=['celeryops.fleet.worker'])] + list(play_extra or [])
        path = os.path.join(self.base, 'site.yml')
        with open(path, 'w') as handle:
            json.dump(plays, handle)
        return self.playbook(path, **kwargs)

    # -- looking at the hosts ------------------------------------------------------------------

    def supervisorctl(self, host, *args):
        return subprocess.run([SUPERVISORCTL, '-c', os.path.join(self.root(host), 'supervisord.conf')] + list(args),
                              capture_output=True, text=True, timeout=120, check=False).stdout

    def pid(self, host, program):
        out = self.supervisorctl(host, 'pid', program).strip()
        return int(out) if out.isdigit() else None

    def supervisord_pid(self, host):
        with open(os.path.join(self.root(host), 'supervisord.pid')) as handle:
            return int(handle.read().strip())

    def executed(self):
        with open(self.record_file) as handle:
            return [line.strip() for line in handle if line.strip()]

    def close(self):
        # TERM makes each supervisord stop its programs (warm shutdowns) and exit: all hosts at once.
        running = []
        for host in ('fleet1', 'fleet2', 'fleet3'):
            try:
                pid = self.supervisord_pid(host)
                os.kill(pid, signal.SIGCONT)  # in case a test left it frozen
                os.kill(pid, signal.SIGTERM)
                running.append(pid)
            except (OSError, ValueError):
                continue
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(os.path.exists('/proc/%d' % pid) for pid in running):
            time.sleep(0.2)
        for pid in running:
            if os.path.exists('/proc/%d' % pid):
                os.kill(pid, signal.SIGKILL)
        # Ansible's ControlPersist masters would outlive the test by a minute otherwise.
        control_dir = os.path.join(self.base, 'cp')
        for name in os.listdir(control_dir) if os.path.isdir(control_dir) else []:
            subprocess.run(['ssh', '-o', 'ControlPath=' + os.path.join(control_dir, name), '-O', 'exit', 'fleet'],
                           capture_output=True, timeout=30, check=False)
        for sshd in self.sshds.values():
            sshd.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class Report(object):
    """The ansible.posix.json report of a run, with helpers to find task results."""

    def __init__(self, data, rc):
        self.data = data
        self.rc = rc

    def tasks(self, name_part):
        """(task name, host, result) for every task run whose name contains name_part, in run order."""
        return [(task['task']['name'], host, result) for play in self.data['plays'] for task in play['tasks']
                if name_part in task['task']['name'] for host, result in task['hosts'].items()]

    def results(self, name_part):
        return [result for _name, _host, result in self.tasks(name_part)]

    def failures(self):
        return ['%s [%s]: %s' % (name, host, result.get('msg', '')) for play in self.data['plays']
                for task in play['tasks'] for name in [task['task']['name']]
                for host, result in task['hosts'].items() if result.get('failed') and not result.get('ignore_errors')]

    def stats(self):
        return self.data['stats']
