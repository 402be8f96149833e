# shellcheck shell=bash
# Sourced by scripts/demo, scripts/test and bench/run: sets up what they need on a fresh
# Debian machine with only Python, and caches it between runs.
#  - a virtualenv with requirements-dev.txt (the newest ansible-core the collection supports, on Python 3.12+),
#    keyed by the hash of that file and the files it includes; build_venv builds the others scripts/test needs
#    (the oldest ansible-core, one per ansible-core for sanity) the same way
#  - the collection placed at $CELERYOPS_BUILD/ansible_collections/celeryops/fleet
#  - ANSIBLE_COLLECTIONS_PATH and PATH pointing at both

set -euo pipefail

CELERYOPS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CELERYOPS_CACHE="${CELERYOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/celeryops-fleet}"

req_files() {  # req_files FILE: FILE and every requirements file it includes with -r, recursively
  local file=$1 include
  echo "$file"
  while read -r include; do
    req_files "$(dirname "$file")/$include"
  done < <(sed -n 's/^-r[[:space:]]*//p' "$file")
}

req_hash() {  # req_hash FILE: the key of a virtualenv built from FILE
  local files
  mapfile -t files < <(req_files "$1")
  cat "${files[@]}" | sha256sum | cut -c1-12
}

CELERYOPS_VENV="${CELERYOPS_VENV:-$CELERYOPS_CACHE/venv-$(req_hash "$CELERYOPS_ROOT/requirements-dev.txt")}"
CELERYOPS_BUILD="${CELERYOPS_BUILD:-$CELERYOPS_CACHE/collections-$(printf %s "$CELERYOPS_ROOT" | sha256sum | cut -c1-8)}"
export CELERYOPS_ROOT CELERYOPS_CACHE CELERYOPS_VENV CELERYOPS_BUILD

log() { printf '==> %s\n' "$*" >&2; }

find_python() {  # find_python 3.12 3.13 ...: the path of the first of these Python versions found on this machine
  local version candidate
  for version in "$@"; do
    # python3.X on PATH, then pyenv's installed versions by path: a pyenv shim for a version that is not active
    # fails ("pyenv: python3.13: command not found"), so each candidate is asked for its version.
    for candidate in "$(command -v "python$version" 2>/dev/null)" "$(command -v python3 2>/dev/null)" \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python3; do
      [ -x "$candidate" ] || continue
      if [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$version" ]; then
        echo "$candidate"; return 0
      fi
    done
  done
  echo "none of Python $* was found (on PATH as python3.X, or below ${PYENV_ROOT:-$HOME/.pyenv}/versions)" >&2
  return 1
}

# build_venv DIR "PYTHON_VERSION..." PIP_INSTALL_ARGS...: a virtualenv at DIR made by the first of the Python versions
# found, with `pip install PIP_INSTALL_ARGS`. Kept once complete; several processes (CI, each developer's tests) share
# the cache, so one builds it under a lock while the others wait for it.
build_venv() {
  local dir=$1 pythons=$2 lock fd
  shift 2
  if [ -x "$dir/bin/python" ] && [ -f "$dir/.complete" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$dir")"
  lock="$dir.lock"
  exec {fd}>"$lock" || return 1
  if ! flock -n "$fd"; then
    log "waiting for another process to finish building $dir"
    flock "$fd" || { exec {fd}>&-; return 1; }
  fi
  if [ -x "$dir/bin/python" ] && [ -f "$dir/.complete" ]; then
    exec {fd}>&-
    return 0
  fi
  _build_venv "$dir" "$pythons" "$@"
  local status=$?
  exec {fd}>&-
  return "$status"
}

_build_venv() {
  local dir=$1 pythons=$2 py
  shift 2
  # shellcheck disable=SC2086  # one word per version
  py="$(find_python $pythons)" || return 1
  log "creating the virtualenv $dir (Python $("$py" -c 'import platform; print(platform.python_version())'): pip install $*)"
  if ! "$py" -m venv --help >/dev/null 2>&1 || ! "$py" -c 'import ensurepip' >/dev/null 2>&1; then
    log "installing python3-venv"
    apt_install python3-venv || return 1
  fi
  rm -rf "$dir"
  "$py" -m venv "$dir" \
    && "$dir/bin/pip" install --quiet --disable-pip-version-check --upgrade pip \
    && "$dir/bin/pip" install --quiet --disable-pip-version-check "$@" \
    && touch "$dir/.complete"
}

# The project's virtualenv: the newest ansible-core, which wants Python 3.12 or newer on the controller.
ensure_venv() {
  build_venv "$CELERYOPS_VENV" "3.12 3.13 3.14" -r "$CELERYOPS_ROOT/requirements-dev.txt"
}

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "${_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
    _APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The collection must sit at ansible_collections/celeryops/fleet for Ansible to load it; a
# symlink to the work tree keeps edits live.
place_collection() {
  mkdir -p "$CELERYOPS_BUILD/ansible_collections/celeryops"
  ln -sfn "$CELERYOPS_ROOT" "$CELERYOPS_BUILD/ansible_collections/celeryops/fleet"
  export ANSIBLE_COLLECTIONS_PATH="$CELERYOPS_BUILD"
  export PATH="$CELERYOPS_VENV/bin:$PATH"
  export ANSIBLE_PYTHON_INTERPRETER="$CELERYOPS_VENV/bin/python"
  export ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false
}

_redis_up() { "$CELERYOPS_VENV/bin/python" - <<'PY' 2>/dev/null
import redis, sys
sys.exit(0 if redis.Redis(host='127.0.0.1', port=6379, socket_timeout=2, socket_connect_timeout=2).ping() else 1)
PY
}

_rabbit_up() { "$CELERYOPS_VENV/bin/python" - <<'PY' 2>/dev/null
import socket, sys
try:
    socket.create_connection(('127.0.0.1', 5672), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}

_management_up() { "$CELERYOPS_VENV/bin/python" - <<'PY' 2>/dev/null
import base64, sys, urllib.request
req = urllib.request.Request('http://127.0.0.1:15672/api/overview',
                             headers={'Authorization': 'Basic ' + base64.b64encode(b'guest:guest').decode()})
try:
    urllib.request.urlopen(req, timeout=3).read()
except Exception:
    sys.exit(1)
PY
}

_wait_for() {  # _wait_for SECONDS FUNCTION
  local deadline=$((SECONDS + $1))
  while ! "$2"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}

# Redis and RabbitMQ (with its management plugin) answering on loopback: started, and
# installed from Debian's packages, when they are not.
ensure_brokers() {
  if ! _redis_up; then
    command -v redis-server >/dev/null 2>&1 || { log "installing redis-server"; apt_install redis-server; }
    log "starting Redis on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    _wait_for 20 _redis_up || { echo "Redis did not come up on 127.0.0.1:6379" >&2; return 1; }
  fi
  if ! _rabbit_up; then
    command -v rabbitmq-server >/dev/null 2>&1 || { log "installing rabbitmq-server"; apt_install rabbitmq-server; }
    log "starting RabbitMQ on 127.0.0.1:5672"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    _wait_for 90 _rabbit_up || { echo "RabbitMQ did not come up on 127.0.0.1:5672" >&2; return 1; }
  fi
  if ! _management_up; then
    log "enabling rabbitmq_management"
    rabbitmq-plugins enable rabbitmq_management >/dev/null
    _wait_for 60 _management_up || { echo "the RabbitMQ management API did not come up on 127.0.0.1:15672" >&2; return 1; }
  fi
}

# sshd and ssh-keygen for the multi-host fleet tests, which start sshd processes of their own
# (tests/integration/fleet.py); no system sshd is configured or started.
ensure_sshd() {
  if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null 2>&1; then
    log "installing openssh-server"
    apt_install openssh-server
  fi
}
