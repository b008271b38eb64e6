# shellcheck shell=bash
# Shared shell helpers for scripts/ and bench/ (source it; not executable on its own).
# Process rule: every background process is started through `start_bg`, which records its PID;
# `stop_all` (installed as the EXIT/INT/TERM trap by `install_cleanup`) kills exactly those PIDs.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"  # used by the scripts that source this
export TARGET_DIR
STARTED_PIDS=()
STARTED_NAMES=()
RUN_DIR=""
KEEP_RUN_DIR="${KEEP_RUN_DIR:-0}"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# start_bg NAME LOGFILE CMD...: start CMD in the background with stdout+stderr to LOGFILE.
# The PID is in $LAST_PID afterwards (not a command substitution, so the PID stays our child).
start_bg() {
  local name="$1" logfile="$2"
  shift 2
  "$@" >"$logfile" 2>&1 </dev/null &
  LAST_PID=$!
  STARTED_PIDS+=("$LAST_PID")
  STARTED_NAMES+=("$name")
  local cmd="$*"
  cmd="${cmd//$'\n'/ }"
  log "started $name (pid $LAST_PID): ${cmd:0:110}"
}

# alive PID: true while PID is running (and not a zombie).
alive() {
  local state
  state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# stop_pid PID: SIGTERM, up to 5 s, then SIGKILL; reap it.
stop_pid() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local i
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${STARTED_PIDS[$i]}"
  done
  STARTED_PIDS=()
  STARTED_NAMES=()
}

# The EXIT trap: stop our processes; remove the run dir unless the script failed or asked to keep it.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all
  if [[ -n $RUN_DIR && -d $RUN_DIR ]]; then
    if [[ $rc -eq 0 && $KEEP_RUN_DIR != 1 ]]; then
      rm -rf "$RUN_DIR"
    else
      log "logs kept in $RUN_DIR"
    fi
  fi
  exit "$rc"
}

install_cleanup() {
  # set -e exits are otherwise silent: say where.
  trap 'log "error: command failed (line $LINENO): $BASH_COMMAND"' ERR
  trap cleanup EXIT
  # INTERRUPT_RC: what Ctrl-C/SIGTERM exits with (0 where that is the normal way to stop).
  trap 'exit "${INTERRUPT_RC:-130}"' INT
  trap 'exit "${INTERRUPT_RC:-143}"' TERM
}

# make_run_dir PREFIX: a fresh temp dir in $RUN_DIR.
make_run_dir() {
  RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
}

# ports_free PROTO:PORT...: fail listing every 127.0.0.1 port that cannot be bound (python3, so
# wildcard listeners and other users' sockets count too).
ports_free() {
  python3 - "$@" <<'PY'
import socket, sys
busy = []
for spec in sys.argv[1:]:
    proto, port = spec.split(":")
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    s = socket.socket(socket.AF_INET, kind)
    if kind == socket.SOCK_STREAM:
        # as servers do: TIME_WAIT leftovers of an earlier run must not count as busy
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(port)))
    except OSError as e:
        busy.append(f"{proto}/{port} ({e.strerror})")
    finally:
        s.close()
if busy:
    print("in use on 127.0.0.1: " + ", ".join(busy), file=sys.stderr)
    sys.exit(1)
PY
}

# free_port: a port free on 127.0.0.1 for both UDP and TCP right now.
free_port() {
  python3 - <<'PY'
import socket
for _ in range(100):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        t.close()
        u.close()
    print(port)
    break
else:
    raise SystemExit("no free port")
PY
}

# wait_dns PORT NAME TYPE PID SECONDS: wait until 127.0.0.1:PORT answers NAME/TYPE (any rcode but
# SERVFAIL, UDP); fail early if PID dies.
wait_dns() {
  local port="$1" name="$2" type="$3" pid="$4" secs="$5" i out
  for ((i = 0; i < secs * 5; i++)); do
    alive "$pid" || return 1
    out=$(dig +norec +time=1 +tries=1 @127.0.0.1 -p "$port" "$name" "$type" 2>/dev/null) || true
    if grep -q 'status: ' <<<"$out" && ! grep -q 'status: SERVFAIL' <<<"$out"; then return 0; fi
    sleep 0.2
  done
  return 1
}

# wait_http URL PID SECONDS: wait for a 2xx from URL; fail early if PID dies.
wait_http() {
  local url="$1" pid="$2" secs="$3" i
  for ((i = 0; i < secs * 5; i++)); do
    alive "$pid" || return 1
    curl -fsS --max-time 1 "$url" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

# render_pdns_conf RUN PORT: pdns.conf + named.conf + demo zone from config/demo into RUN.
render_pdns_conf() {
  local run="$1" port="$2"
  sed -e "s#@RUN@#$run#g" -e "s#@PORT@#$port#g" "$ROOT/config/demo/pdns.conf.in" >"$run/pdns.conf"
  sed -e "s#@RUN@#$run#g" "$ROOT/config/demo/named.conf.in" >"$run/named.conf"
  cp "$ROOT/config/demo/demo.test.zone" "$run/demo.test.zone"
}

pdns_server_bin() {
  command -v pdns_server 2>/dev/null || { [[ -x /usr/sbin/pdns_server ]] && echo /usr/sbin/pdns_server; } ||
    die "pdns_server not installed: run scripts/install-deps.sh"
}

# tail_log FILE: the last lines of a log, indented, for error messages.
tail_log() { [[ -f $1 ]] && tail -n "${2:-30}" "$1" | sed 's/^/    /' >&2; return 0; }

# cpu_ticks PID: utime+stime of PID in clock ticks (all threads), from /proc/PID/stat.
cpu_ticks() {
  # Fields after the ")" of comm: state is field 3 overall; utime=14, stime=15.
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
