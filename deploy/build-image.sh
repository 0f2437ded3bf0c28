#!/usr/bin/env bash
# `make image`: build thinwire:latest with whatever compose this machine has, online or offline.
#
#   deploy/build-image.sh [extra compose build args]
#
# 1. compose: `docker compose` (v2) if it answers, else `docker-compose` (v1 >= 1.29).
# 2. base image: the registry's python:3.11-slim when it is already local or can be pulled;
#    otherwise (no registry access) deploy/offline-base.sh --env builds a Debian base image and a
#    wheelhouse locally and their tags are passed as THINWIRE_BASE_IMAGE / THINWIRE_WHEELHOUSE.
#    Set THINWIRE_BASE_IMAGE yourself to skip the probe; THINWIRE_OFFLINE=1 forces the offline route.
# Exit status: 0 = built; 3 = no usable docker / compose (run deploy/start-dockerd.sh); else compose's.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
say() { echo "build-image: $*" >&2; }

command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 ||
  { say "docker is not usable; start an engine first (deploy/start-dockerd.sh)"; exit 3; }
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  say "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed"; exit 3
fi

ONLINE_BASE=python:3.11-slim
if [[ -z ${THINWIRE_BASE_IMAGE:-} ]]; then
  if [[ ${THINWIRE_OFFLINE:-0} != 1 ]] && { docker image inspect "$ONLINE_BASE" >/dev/null 2>&1 ||
      timeout "${THINWIRE_PULL_TIMEOUT_S:-120}" docker pull -q "$ONLINE_BASE" >/dev/null 2>&1; }; then
    say "base image $ONLINE_BASE (registry)"
  else
    say "registry unreachable (or THINWIRE_OFFLINE=1): building the offline base with deploy/offline-base.sh"
    env_lines=$("$here/offline-base.sh" --env)
    while IFS='=' read -r key value; do
      [[ $key == THINWIRE_BASE_IMAGE || $key == THINWIRE_WHEELHOUSE ]] && export "$key=$value"
    done <<<"$env_lines"
    say "base image $THINWIRE_BASE_IMAGE, wheels $THINWIRE_WHEELHOUSE"
  fi
fi
say "${compose[*]} build $*"
exec "${compose[@]}" build "$@"
