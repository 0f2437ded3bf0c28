#!/usr/bin/env bash
# Build thinwire's image inputs without an image registry: a Python 3.11 base image made from
# Debian packages, and a wheelhouse image holding every pinned wheel.
#
#   deploy/offline-base.sh            make both (cached), print the build arguments to use
#   deploy/offline-base.sh --env      ... and print only KEY=VALUE lines (for compose / scripts)
#
# Outputs (docker images, tagged by a hash of their inputs, so a second run is instant):
#   thinwire/offline-base:bookworm-py3.11    Debian bookworm minbase + python3 3.11 + venv
#   thinwire/wheelhouse:<hash>               that base + /wheels/{torch,rest}/*.whl (torch CPU,
#                                            ray[default] and every other pin of pyproject.toml)
# Use them with deploy/Dockerfile:
#   docker build -f deploy/Dockerfile --build-arg BASE_IMAGE=thinwire/offline-base:bookworm-py3.11 \
#     --build-arg WHEELHOUSE=thinwire/wheelhouse:<hash> -t thinwire:latest .
#
# Needs: a working docker (deploy/start-dockerd.sh), root for debootstrap (installed with apt when
# missing), a Debian mirror reachable through apt's sources, and pip reaching PyPI (or a
# pip.conf that points at a local index). The torch wheel comes from $THINWIRE_TORCH_WHEELS
# (default /opt/wheels) when it holds torch==$TORCH_VERSION, else from the PyTorch CPU index.
# Cache: $THINWIRE_CACHE (default /var/cache/thinwire when writable, else ~/.cache/thinwire).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
ENV_ONLY=0
[[ ${1:-} == "--env" ]] && ENV_ONLY=1

say() { echo "offline-base: $*" >&2; }
fail() { say "error: $*"; exit 3; }

if [[ -n ${THINWIRE_CACHE:-} ]]; then
  CACHE=$THINWIRE_CACHE
elif mkdir -p /var/cache/thinwire 2>/dev/null && [[ -w /var/cache/thinwire ]]; then
  CACHE=/var/cache/thinwire
else
  CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/thinwire
fi
mkdir -p "$CACHE"

SUITE=${THINWIRE_DEBIAN_SUITE:-bookworm}
MIRROR=${THINWIRE_DEBIAN_MIRROR:-}
BASE_TAG=${THINWIRE_BASE_TAG:-thinwire/offline-base:${SUITE}-py3.11}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_WHEELS=${THINWIRE_TORCH_WHEELS:-/opt/wheels}
PY=${THINWIRE_HOST_PYTHON:-python3}

command -v docker >/dev/null && docker info >/dev/null 2>&1 || fail "docker is not usable; run deploy/start-dockerd.sh first"

# ---------------------------------------------------------------------------------------------
# 1. Base image: debootstrap a minimal Debian with python3 + venv, tar it, docker import it.
# ---------------------------------------------------------------------------------------------
base_tar=$CACHE/rootfs-$SUITE-py3.11.tar
if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  if [[ ! -s $base_tar ]]; then
    [[ $(id -u) == 0 ]] || fail "building the base root filesystem needs root (debootstrap)"
    if ! command -v debootstrap >/dev/null; then
      say "installing debootstrap"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
        { apt-get update -qq >/dev/null 2>&1 || true
          DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } ||
        fail "cannot install debootstrap"
    fi
    if [[ -z $MIRROR ]]; then
      # The mirror apt already uses on this machine (deb822 or one-line sources).
      MIRROR=$(grep -hE '^[[:space:]]*(URIs:|deb[[:space:]])' /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)
      MIRROR=${MIRROR:-http://deb.debian.org/debian}
    fi
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    say "debootstrap $SUITE from $MIRROR (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
      { tail -n 20 "$CACHE/debootstrap.log" >&2; fail "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    # Slim it the way the official slim images are: no package caches, docs or man pages.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*
    # Match python:3.11-slim's layout: `python` and `python3` on PATH under /usr/local/bin.
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    tar -C "$root" --numeric-owner -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$root"
    trap - EXIT
  fi
  say "importing $base_tar as $BASE_TAG"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$base_tar" "$BASE_TAG" >/dev/null
fi

# ---------------------------------------------------------------------------------------------
# 2. Wheelhouse: every pinned dependency of pyproject.toml (+ ray[default], build backend) as
#    cp311 manylinux wheels, then an image = base + /wheels.
# ---------------------------------------------------------------------------------------------
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  fail "$PY is older than 3.11; set THINWIRE_HOST_PYTHON to a Python >= 3.11"
reqs=$("$PY" - "$repo/pyproject.toml" <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
out = []
for d in deps:
    # The image also runs Ray head/worker nodes and `ray job submit`: add Ray's [default] extra.
    out.append(re.sub(r"^ray(?=[=<>~ ])", "ray[default]", d))
out += ["setuptools>=68", "wheel"]
print("\n".join(out))
EOF
)
key=$(printf '%s\n%s\n' "$reqs" "$TORCH_VERSION" | sha256sum | cut -c1-12)
# The image tag also depends on the base it was built FROM (a re-imported base gets a new id).
img_key=$(printf '%s\n%s\n' "$key" "$(docker image inspect --format '{{.Id}}' "$BASE_TAG")" | sha256sum | cut -c1-12)
WHEEL_TAG=${THINWIRE_WHEELHOUSE_TAG:-thinwire/wheelhouse:$img_key}
wheels=$CACHE/wheelhouse-$key

if ! docker image inspect "$WHEEL_TAG" >/dev/null 2>&1; then
  if [[ ! -f $wheels/.complete ]]; then
    rm -rf "$wheels"
    mkdir -p "$wheels/torch" "$wheels/rest"
    # Target the image's interpreter, not this machine's: CPython 3.11, glibc 2.36 (bookworm).
    # pip does not widen --platform to older manylinux levels by itself: list them all.
    target=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311)
    for v in $(seq 36 -1 5); do target+=(--platform "manylinux_2_${v}_x86_64"); done
    target+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
             --platform manylinux1_x86_64 --platform linux_x86_64)
    # Wheels of an earlier wheelhouse (other pins) are reused instead of downloaded again.
    reuse=()
    for d in "$CACHE"/wheelhouse-* "$CACHE"/wheelhouse-*/torch "$CACHE"/wheelhouse-*/rest; do
      [[ -d $d && $d != "$wheels" && $d != "$wheels"/* ]] && reuse+=(--find-links "$d")
    done
    pip_dl=("$PY" -m pip download --quiet --disable-pip-version-check "${target[@]}" "${reuse[@]}")
    # torch and its dependencies in torch/, everything else in rest/: two image layers, so a
    # change of the other pins leaves the torch layers of the thinwire build cached.
    if ls "$TORCH_WHEELS"/torch-"$TORCH_VERSION"+cpu-cp311-*.whl >/dev/null 2>&1; then
      say "torch $TORCH_VERSION (CPU) from $TORCH_WHEELS"
      "${pip_dl[@]}" -d "$wheels/torch" --find-links "$TORCH_WHEELS" "torch==$TORCH_VERSION" ||
        fail "pip download torch failed"
    else
      say "torch $TORCH_VERSION (CPU) from the PyTorch CPU index"
      "${pip_dl[@]}" -d "$wheels/torch" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple "torch==$TORCH_VERSION" || fail "pip download torch failed"
    fi
    say "downloading the pinned wheels into $wheels"
    printf '%s\n' "$reqs" >"$wheels/requirements.txt"
    "${pip_dl[@]}" -d "$wheels/rest" --find-links "$wheels/torch" -r "$wheels/requirements.txt" ||
      fail "pip download failed"
    for f in "$wheels"/torch/*.whl; do rm -f "$wheels/rest/$(basename "$f")"; done
    touch "$wheels/.complete"
  fi
  say "building $WHEEL_TAG ($(du -sh "$wheels" | cut -f1) of wheels)"
  docker build --quiet -t "$WHEEL_TAG" -f - "$wheels" >/dev/null <<EOF || fail "building $WHEEL_TAG failed"
FROM $BASE_TAG
COPY torch /wheels/torch
COPY rest /wheels/rest
EOF
fi

# Garbage: older wheel directories of this cache (inputs changed).
for d in "$CACHE"/wheelhouse-*; do
  [[ -d $d && $d != "$wheels" ]] && rm -rf "$d"
done

if ((ENV_ONLY)); then
  echo "THINWIRE_BASE_IMAGE=$BASE_TAG"
  echo "THINWIRE_WHEELHOUSE=$WHEEL_TAG"
else
  say "ready. Build the thinwire image offline with:"
  echo "  docker build -f deploy/Dockerfile --build-arg BASE_IMAGE=$BASE_TAG --build-arg WHEELHOUSE=$WHEEL_TAG -t thinwire:latest ."
  echo "or put these in .env for docker compose:"
  echo "  THINWIRE_BASE_IMAGE=$BASE_TAG"
  echo "  THINWIRE_WHEELHOUSE=$WHEEL_TAG"
fi
