#!/usr/bin/env bash
# Make a Docker engine usable on this machine, for the compose system test and local use.
#
#   deploy/start-dockerd.sh          ensure `docker info` works (install + start dockerd if needed)
#   deploy/start-dockerd.sh --stop   stop a dockerd that this script started
#
# What it does, in order, stopping at the first step that is enough:
#   1. `docker info` already answers            -> nothing to do.
#   2. dockerd missing, we are root, apt exists -> apt-get install docker.io (engine, containerd,
#      runc, docker-init) and docker-compose (v1) when no compose is present.
#   3. start dockerd in the background with its data under $THINWIRE_DOCKER_ROOT
#      (default /var/lib/thinwire-docker), log in $THINWIRE_DOCKER_LOG, and wait for the socket.
# Exit status: 0 = docker usable; 3 = cannot be made usable (reason on stderr, one line per cause).
set -euo pipefail

DATA_ROOT=${THINWIRE_DOCKER_ROOT:-/var/lib/thinwire-docker}
LOG=${THINWIRE_DOCKER_LOG:-/var/log/thinwire-dockerd.log}
PIDFILE=${THINWIRE_DOCKER_PIDFILE:-/var/run/thinwire-dockerd.pid}
WAIT_S=${THINWIRE_DOCKER_WAIT_S:-60}

say() { echo "start-dockerd: $*" >&2; }
fail() { say "cannot make docker usable: $*"; exit 3; }

docker_ok() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
compose_ok() {
  { command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; } ||
    command -v docker-compose >/dev/null 2>&1
}

if [[ ${1:-} == "--stop" ]]; then
  if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    rm -f "$PIDFILE"
    say "stopped dockerd (pid $pid)"
  else
    say "no dockerd started by this script is running"
  fi
  exit 0
fi

apt_install() {
  [[ $(id -u) == 0 ]] || fail "'$*' is missing and installing it needs root (run as root, or install Docker yourself)"
  command -v apt-get >/dev/null 2>&1 || fail "'$*' is missing and this machine has no apt-get"
  say "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists may be stale or absent on a fresh machine.
  apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed; trying the cached package lists"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    fail "apt-get install $* failed"
}

if docker_ok; then
  if ! compose_ok; then apt_install docker-compose; fi
  exit 0
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io iptables)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
compose_ok || need+=(docker-compose)
if ((${#need[@]})); then
  # shellcheck disable=SC2207
  need=($(printf '%s\n' "${need[@]}" | sort -u))
  apt_install "${need[@]}"
fi
command -v dockerd >/dev/null 2>&1 || fail "dockerd is still not on PATH after installing docker.io"

[[ $(id -u) == 0 ]] || fail "dockerd is installed but not running, and starting it needs root"

if [[ -S /var/run/docker.sock ]] && ! docker_ok; then
  # A stale socket from a daemon that died; dockerd refuses to start over a live one only.
  if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    say "dockerd (pid $(cat "$PIDFILE")) is starting; waiting for it"
  else
    rm -f /var/run/docker.sock
  fi
fi

if ! { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }; then
  mkdir -p "$DATA_ROOT" "$(dirname "$LOG")"
  say "starting dockerd (data root $DATA_ROOT, log $LOG)"
  # setsid: the daemon outlives the test process and its process group.
  setsid nohup dockerd --data-root "$DATA_ROOT" --pidfile "$PIDFILE" \
    --host unix:///var/run/docker.sock >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq 1 "$WAIT_S"); do
  if docker_ok; then
    say "docker is ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    exit 0
  fi
  if [[ -f $PIDFILE ]] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then break; fi
  sleep 1
done
say "last lines of $LOG:"
tail -n 15 "$LOG" >&2 || true
fail "dockerd did not answer within ${WAIT_S}s"
