#!/usr/bin/env bash
# Entrypoint of the thinwire image: `thinwire-entrypoint ROLE [ARGS...]`.
#
# Roles
#   server | client | launch | certs | simulate | ...   run `thinwire ROLE`, with flags from env
#   health                probe the gRPC server's Status RPC (docker healthcheck); exit 0 = serving
#   ray-head              `ray start --head` in the foreground (GCS 6379, client 10001; dashboard 8265
#                         when THINWIRE_RAY_DASHBOARD=true)
#   ray-worker            `ray start --address $THINWIRE_RAY_HEAD` in the foreground
#   ray-health            exit 0 when the Ray GCS at $THINWIRE_RAY_HEAD answers
#   ray-launch            join the Ray cluster as a 0-CPU node, wait for $THINWIRE_RAY_NODES nodes,
#                         then `thinwire launch --ray-address auto` (flags from env)
#   --help / -h           `thinwire --help`
#   anything else         executed as a command (e.g. `bash`, `python3`, `ray status`)
#
# Environment -> flags: every option of the thinwire subcommand can be set as THINWIRE_<OPTION>,
# upper case with dashes as underscores: THINWIRE_ROUNDS=20 -> --rounds 20,
# THINWIRE_LOSS_PROB=0.1 -> --loss-prob 0.1, THINWIRE_INSECURE=true -> --insecure,
# THINWIRE_PROGRESS=false -> --no-progress. Variables naming options the subcommand does not have
# are ignored, so one env file can serve every service. Flags given as ARGS win over the env.
# THINWIRE_TOKEN is read by thinwire itself (never put on the command line, where `ps` shows it).
#
# Clients: unless THINWIRE_CLIENT_ID_START or --client-id-start is given, a client derives its
# first id from its compose replica number (container name ..._client_N / ...-client-N, found by
# a reverse DNS lookup of its own address): start = (N - 1) * virtual clients.
set -euo pipefail

role=${1:---help}
[[ $# -gt 0 ]] && shift

RAY_HEAD=${THINWIRE_RAY_HEAD:-ray-head:6379}
RAY_CPUS=${THINWIRE_RAY_CPUS:-1}
# Ray's shared-memory object store; small by default so a laptop can hold several nodes.
RAY_OBJ_MB=${THINWIRE_RAY_OBJECT_STORE_MB:-256}

# The Python half: map env to flags for a thinwire subcommand and run it in this process.
read -r -d '' RUN_PY <<'PYEOF' || true
import argparse, os, re, socket, sys
from thinwire import cli

cmd, user_args = sys.argv[1], sys.argv[2:]
SKIP_ENV = {"token"}  # thinwire reads THINWIRE_TOKEN itself; keep secrets off the command line
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}

sys.argv = ["thinwire", cmd]
parser, modules = cli.build_parser()
if cmd not in modules:
    print(f"thinwire-entrypoint: command {cmd!r} is not available in this image", file=sys.stderr)
    sys.exit(2)
sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[cmd]

given = {a.split("=", 1)[0] for a in user_args if a.startswith("--")}
flags = []
for act in sub._actions:
    longs = [o for o in act.option_strings if o.startswith("--") and not o.startswith("--no-")]
    if not longs or isinstance(act, argparse._HelpAction):
        continue
    opt = longs[0]
    name = opt[2:]
    if name.replace("-", "_") in SKIP_ENV:
        continue
    val = os.environ.get("THINWIRE_" + name.upper().replace("-", "_"))
    if val is None or opt in given or ("--no-" + name) in given:
        continue
    low = val.strip().lower()
    if isinstance(act, argparse.BooleanOptionalAction):
        if low not in TRUE | FALSE:
            sys.exit(f"thinwire-entrypoint: THINWIRE_{name.upper().replace('-', '_')}={val!r}: expected true or false")
        flags.append(opt if low in TRUE else "--no-" + name)
    elif act.nargs == 0:
        if low not in TRUE | FALSE:
            sys.exit(f"thinwire-entrypoint: THINWIRE_{name.upper().replace('-', '_')}={val!r}: expected true or false")
        if low in TRUE:
            flags.append(opt)
    elif val != "":
        flags += [opt, val]

if cmd == "client" and "--client-id-start" not in given and "THINWIRE_CLIENT_ID_START" not in os.environ:
    def ptr_name(ip, server="127.0.0.11"):
        """Reverse lookup at Docker's embedded DNS (it names containers; /etc/hosts has only the id)."""
        import random, struct
        qname = b"".join(bytes([len(p)]) + p.encode() for p in [*reversed(ip.split(".")), "in-addr", "arpa"])
        qid = random.randrange(1 << 16)
        query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + b"\0" + struct.pack(">HH", 12, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2.0)
            s.sendto(query, (server, 53))
            msg = s.recv(4096)
        rid, flags, qd, an = struct.unpack(">HHHH", msg[:8])
        if rid != qid or flags & 0xF or an < 1:
            return None

        def name_at(off):
            labels = []
            while msg[off]:
                if msg[off] & 0xC0 == 0xC0:       # compression pointer
                    labels.append(name_at(struct.unpack(">H", msg[off:off + 2])[0] & 0x3FFF)[0])
                    return ".".join(labels), off + 2
                labels.append(msg[off + 1:off + 1 + msg[off]].decode())
                off += 1 + msg[off]
            return ".".join(labels), off + 1

        off = name_at(12)[1] + 4                  # skip the question
        for _ in range(an):
            off = name_at(off)[1]
            rtype, _c, _t, rdlen = struct.unpack(">HHIH", msg[off:off + 10])
            if rtype == 12:
                return name_at(off + 10)[0]
            off += 10 + rdlen
        return None

    n, fqdn = None, "?"
    try:
        fqdn = ptr_name(socket.gethostbyname(socket.gethostname())) or "?"
        m = re.search(r"[-_](\d+)$", fqdn.split(".")[0])
        n = int(m.group(1)) if m else None
    except Exception as e:  # no embedded DNS (plain `docker run`), timeout, odd reply
        fqdn = f"? ({e})"
    if n is None:
        print(f"thinwire-entrypoint: no replica number in my name ({fqdn}); using --client-id-start 0",
              file=sys.stderr)
    else:
        vc = int(os.environ.get("THINWIRE_VIRTUAL_CLIENTS", "1") or 1)
        for i, a in enumerate(user_args):
            if a == "--virtual-clients" and i + 1 < len(user_args):
                vc = int(user_args[i + 1])
            elif a.startswith("--virtual-clients="):
                vc = int(a.split("=", 1)[1])
        flags += ["--client-id-start", str((n - 1) * vc)]
        print(f"thinwire-entrypoint: replica {n} ({fqdn}) hosts client ids {(n - 1) * vc}..{n * vc - 1}",
              file=sys.stderr, flush=True)

def value_of(opt):
    """The value `opt` gets from the user's args or, failing that, from the env-derived flags."""
    for args in (user_args, flags):
        for i, a in enumerate(args):
            if a == opt and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(opt + "="):
                return a.split("=", 1)[1]
    return None

if cmd in ("server", "launch"):
    # Per-round follows the fleet size unless set: THINWIRE_CLIENTS=3 aggregates 3 per round.
    clients = value_of("--clients")
    if clients is not None and value_of("--per-round") is None:
        flags += ["--per-round", clients]
    # THINWIRE_RESUME=true (compose's restart policy) continues a checkpointed run; a fresh start
    # (no checkpoint yet) starts over quietly, replacing any files of a run that never checkpointed.
    if "--resume" in flags and "--resume" not in user_args:
        from pathlib import Path
        from thinwire.checkpoint import CHECKPOINT
        name = value_of("--name") or ""
        run_dir = Path(value_of("--out-dir") or "runs") / name
        if not name or not (run_dir / CHECKPOINT).is_file():
            flags.remove("--resume")
            if name and run_dir.is_dir() and any(run_dir.iterdir()):
                flags.append("--force")
            print(f"thinwire-entrypoint: no checkpoint in {run_dir}: starting run {name!r} from round 0",
                  file=sys.stderr, flush=True)

argv = [cmd, *flags, *user_args]
shown = " ".join(argv)
print(f"thinwire-entrypoint: thinwire {shown}", file=sys.stderr, flush=True)
sys.exit(cli.main(argv))
PYEOF

# Status RPC probe for the healthcheck. Alive = any answer from the servicer (an auth refusal
# also proves the server is up); dead = unreachable / timeout / TLS failure.
read -r -d '' HEALTH_PY <<'PYEOF' || true
import os, sys
import grpc
from thinwire.protos import thinwire_pb2, thinwire_pb2_grpc

target = os.environ.get("THINWIRE_HEALTH_TARGET") or f"127.0.0.1:{os.environ.get('THINWIRE_PORT', '50051')}"
ca = os.environ.get("THINWIRE_HEALTH_TLS_CA", "")
if ca:
    def read(p):
        return open(p, "rb").read() if p and os.path.exists(p) else None
    creds = grpc.ssl_channel_credentials(read(ca), read(os.environ.get("THINWIRE_HEALTH_TLS_KEY", "")),
                                         read(os.environ.get("THINWIRE_HEALTH_TLS_CERT", "")))
    name = os.environ.get("THINWIRE_HEALTH_TLS_SERVER_NAME", "server")
    channel = grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", name)])
else:
    channel = grpc.insecure_channel(target)
md = [("authorization", "Bearer " + os.environ["THINWIRE_TOKEN"])] if os.environ.get("THINWIRE_TOKEN") else []
try:
    st = thinwire_pb2_grpc.ParameterServerStub(channel).Status(thinwire_pb2.StatusRequest(), timeout=3, metadata=md)
    print(f"serving {target}: run {st.run_name!r} round {st.round}")
except grpc.RpcError as e:
    if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        print(f"serving {target} (status refused: {e.code().name})")
    else:
        print(f"not serving {target}: {e.code().name} {e.details()}")
        sys.exit(1)
PYEOF

# Wait until the Ray cluster has N alive nodes (the launcher counts as one).
read -r -d '' WAIT_NODES_PY <<'PYEOF' || true
import os, sys, time
import ray
want = int(os.environ.get("THINWIRE_RAY_NODES", "1"))
timeout = float(os.environ.get("THINWIRE_RAY_WAIT_S", "180"))
ray.init(address="auto", logging_level="ERROR")
t0 = time.monotonic()
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want:
        print(f"thinwire-entrypoint: Ray cluster has {len(alive)} nodes, "
              f"{ray.cluster_resources().get('CPU', 0):g} CPUs", file=sys.stderr, flush=True)
        break
    if time.monotonic() - t0 > timeout:
        sys.exit(f"thinwire-entrypoint: only {len(alive)} of {want} Ray nodes after {timeout:g}s")
    time.sleep(1)
PYEOF

# A token kept in a file (e.g. the certs volume) instead of the environment.
if [[ -n ${THINWIRE_TOKEN_FILE:-} && -z ${THINWIRE_TOKEN:-} && -r ${THINWIRE_TOKEN_FILE} ]]; then
  THINWIRE_TOKEN=$(<"$THINWIRE_TOKEN_FILE")
  export THINWIRE_TOKEN
fi

# Ray's components wait for each other's port files; on a loaded laptop they need longer than the
# default before a node gives up.
export RAY_agent_register_timeout_ms=${RAY_agent_register_timeout_ms:-120000}
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=${RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO:-0}
# The dashboard (needed by `ray job submit`) is opt-in: THINWIRE_RAY_DASHBOARD=true.
RAY_DASHBOARD=${THINWIRE_RAY_DASHBOARD:-false}

ray_common=(--num-cpus="$RAY_CPUS" --object-store-memory=$((RAY_OBJ_MB * 1024 * 1024))
            --disable-usage-stats)

case "$role" in
  -h | --help | help)
    exec thinwire --help ;;
  health)
    exec python3 -c "$HEALTH_PY" ;;
  certs)
    # One-shot certs service: idempotent. Keeps an existing bundle (unless --force) and adds a
    # random shared token file next to it.
    out=${THINWIRE_OUT:-/certs}
    if [[ -s $out/ca.pem && -s $out/server.pem && " $* " != *" --force "* ]]; then
      echo "thinwire-entrypoint: certificates already in $out (pass --force to replace them)" >&2
    else
      python3 -c "$RUN_PY" certs "$@"
    fi
    if [[ ! -s $out/token ]]; then
      (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$out/token")
      echo "thinwire-entrypoint: wrote a client token to $out/token" >&2
    fi
    exit 0 ;;
  ray-head)
    port=${RAY_HEAD##*:}
    exec ray start --head --port="$port" --ray-client-server-port=10001 \
      --dashboard-host=0.0.0.0 --dashboard-port=8265 --include-dashboard="$RAY_DASHBOARD" \
      "${ray_common[@]}" --block "$@" ;;
  ray-worker)
    exec ray start --address="$RAY_HEAD" "${ray_common[@]}" --block "$@" ;;
  ray-health)
    exec ray health-check --address "$RAY_HEAD" ;;
  ray-launch)
    ray start --address="$RAY_HEAD" --num-cpus=0 \
      --object-store-memory=$((RAY_OBJ_MB * 1024 * 1024)) --disable-usage-stats >/dev/null
    trap 'ray stop --force >/dev/null 2>&1 || true' EXIT
    python3 -c "$WAIT_NODES_PY"
    status=0
    THINWIRE_RAY_ADDRESS=${THINWIRE_RAY_ADDRESS:-auto} python3 -c "$RUN_PY" launch "$@" || status=$?
    exit "$status" ;;
  -*)
    # Flags only: `docker run thinwire --version` style -> the thinwire CLI.
    exec thinwire "$role" "$@" ;;
  *)
    if [[ $role =~ ^[a-z]+$ ]] && python3 -c "import sys; from thinwire.cli import COMMANDS; sys.exit('$role' not in COMMANDS)"; then
      exec python3 -c "$RUN_PY" "$role" "$@"
    fi
    exec "$role" "$@" ;;
esac
