#!/usr/bin/env bash
# Run the dnsteer container image against a real PowerDNS, all on loopback:
#   - build the image (scripts/image.sh) and check `--version` inside it;
#   - PowerDNS on a free 127.0.0.1 port serving the demo zone (config/demo);
#   - the container with --network host, --read-only (no tmpfs either: nothing may be written),
#     all capabilities dropped, and its config mounted read-only the way a Kubernetes ConfigMap
#     volume is laid out: <dir>/..2026_…/dnsteer.toml, <dir>/..data -> ..2026_…,
#     <dir>/dnsteer.toml -> ..data/dnsteer.toml;
#   - dig: an in-process record (content PowerDNS does not have) and a forwarded one;
#     /readyz 200;
#   - hot reload: a new timestamped dir with a changed record, `..data` swapped by rename; the
#     answer must change within RELOAD_WAIT seconds;
#   - `podman stop`: /readyz 503 while DNS still answers (drain), then exit code 0 within the
#     configured shutdown_grace.
#
#   scripts/image-test.sh
# Env: DNSTEER_BIN=path (passed to image.sh: skip cargo), IMAGE=ref (skip the build, test this
#      image), SKIP_DEPS=1 (skip scripts/install-deps.sh), KEEP_RUN_DIR=1.
# Exit: 0 passed; 1 failed; 0 with a line starting "SKIP:" only when no OCI runtime can start a
# container in this environment (the error of each runtime tried is printed).
# The EXIT trap removes the container it started (by name) and stops the PowerDNS it started.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

DRAIN_S=2 GRACE_S=6 RELOAD_WAIT=10
NAME="dnsteer-image-test-$$"
started_at=$SECONDS

[[ ${SKIP_DEPS:-0} == 1 ]] || bash "$ROOT/scripts/install-deps.sh" >&2
if [[ -z ${IMAGE:-} ]]; then
  IMAGE=$(bash "$ROOT/scripts/image.sh" | tail -n1)
fi
log "image $IMAGE"

make_run_dir dnsteer-image-test
install_cleanup
remove_container() { podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true; }
# Chain onto lib.sh's cleanup: the container first, then the PIDs and the run dir.
trap 'remove_container; cleanup' EXIT

# ---- an OCI runtime that works here ---------------------------------------------------------
# Podman's default rlimits (RLIMIT_NOFILE/NPROC 1048576/4194304) need CAP_SYS_RESOURCE when they
# exceed the caller's hard limits; in a sandbox without it the runtime's setrlimit fails. Ask for
# values within this shell's hard limits instead (the container needs few of either).
nofile=$(ulimit -Hn) nproc=4096
[[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
RUN_ARGS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
# crun refuses hybrid cgroup hierarchies that have controllers on the v2 mount; runc accepts
# them. Try the default runtime, then runc (installed from Debian when missing).
runtime_errors="" runtime_ok=0
RUNTIME=()
for rt in default runc; do
  args=()
  if [[ $rt == runc ]]; then
    if ! command -v runc >/dev/null 2>&1 &&
      ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q runc >"$RUN_DIR/apt-runc.log" 2>&1; then
      runtime_errors+="  apt-get install runc: failed (see $RUN_DIR/apt-runc.log)"$'\n'
      continue
    fi
    args=(--runtime runc)
  fi
  if out=$(timeout 60 podman "${args[@]}" run --rm --network none --read-only "${RUN_ARGS[@]}" \
    "$IMAGE" --version 2>&1); then
    RUNTIME=("${args[@]}") runtime_ok=1
    log "runtime $rt: $IMAGE --version: $out"
    break
  fi
  runtime_errors+="  podman ${args[*]} run --rm --network none --read-only ${RUN_ARGS[*]} $IMAGE --version"$'\n'
  runtime_errors+="    -> ${out//$'\n'/ }"$'\n'
done
if ((runtime_ok)) && [[ -n $runtime_errors ]]; then
  log "the default runtime failed here (runc used instead):"
  printf '%s' "$runtime_errors" >&2
fi
if ((!runtime_ok)); then
  printf '%s' "$runtime_errors" >&2
  # Only a sandbox that cannot create containers at all is a SKIP; anything else is a failure.
  grep -Eqi 'cgroup|rlimit|user namespace|newuidmap|overlay|mount|operation not permitted' \
    <<<"$runtime_errors" || die "no runtime could start the image (errors above)"
  # The image itself is still checked: user and entrypoint, and the files in it.
  podman image inspect --format 'user={{.Config.User}} entrypoint={{json .Config.Entrypoint}} cmd={{json .Config.Cmd}}' "$IMAGE"
  mnt=$(podman image mount "$IMAGE") || die "podman image mount failed"
  find "$mnt" -type f -printf '  /%P %m %s\n'
  # The image's own libraries suffice for the binary (chroot: no container runtime needed).
  chroot --userspec="65532:65532" "$mnt" /usr/local/bin/dnsteer --version ||
    { podman image unmount "$IMAGE" >/dev/null; die "dnsteer --version fails in a chroot of the image"; }
  podman image unmount "$IMAGE" >/dev/null
  echo "SKIP: no OCI runtime can start a container here (errors above); image built and inspected only"
  exit 0
fi

# ---- PowerDNS on the host -------------------------------------------------------------------
PDNS_PORT=$(free_port)
render_pdns_conf "$RUN_DIR" "$PDNS_PORT"
start_bg pdns_server "$RUN_DIR/pdns.log" "$(pdns_server_bin)" --config-dir="$RUN_DIR"
PDNS_PID=$LAST_PID
wait_dns "$PDNS_PORT" demo.test SOA "$PDNS_PID" 20 ||
  { tail_log "$RUN_DIR/pdns.log"; die "PowerDNS did not come up on :$PDNS_PORT"; }

# ---- the config, laid out like a ConfigMap volume -------------------------------------------
DNS_PORT=$(free_port)
METRICS_PORT=$(free_port)
CFG="$RUN_DIR/config"
mkdir -p "$CFG"
# write_config VERSION ADDRESS: a new timestamped dir holding dnsteer.toml, then swap ..data to
# it the way the kubelet does (symlink ..data_tmp, rename over ..data), and drop the old dir.
write_config() {
  local dir old=""
  dir="..$(date +%Y_%m_%d_%H_%M_%S).$1"
  mkdir "$CFG/$dir"
  cat >"$CFG/$dir/dnsteer.toml" <<EOF
# scripts/image-test.sh, config version $1
[server]
listen = ["127.0.0.1:$DNS_PORT"]
workers = 1
shutdown_drain = "${DRAIN_S}s"
shutdown_grace = "${GRACE_S}s"

[metrics]
listen = "127.0.0.1:$METRICS_PORT"

[logging]
level = "info"
query_sample_rate = 0.0

[upstream]
servers = ["127.0.0.1:$PDNS_PORT"]
health_check_interval = "1s"

# PowerDNS has static.demo.test with 192.0.2.10/11: this answer can only come from dnsteer.
[[records]]
name = "static.demo.test."
type = "A"
ttl = 30
content = ["$2"]
EOF
  chmod -R a+rX "$CFG"
  [[ -L $CFG/..data ]] && old=$(readlink "$CFG/..data")
  ln -s "$dir" "$CFG/..data_tmp"
  mv -T "$CFG/..data_tmp" "$CFG/..data"
  [[ -e $CFG/dnsteer.toml ]] || ln -s ..data/dnsteer.toml "$CFG/dnsteer.toml"
  if [[ -n $old ]]; then rm -rf "${CFG:?}/$old"; fi
}
write_config 1 198.51.100.1

# ---- the container --------------------------------------------------------------------------
log "starting container $NAME (${RUNTIME[*]:-default runtime})"
podman "${RUNTIME[@]}" run -d --name "$NAME" --network host --read-only --read-only-tmpfs=false \
  --cap-drop all --security-opt no-new-privileges "${RUN_ARGS[@]}" \
  -v "$CFG:/etc/dnsteer:ro" "$IMAGE" >"$RUN_DIR/container.id"
container_log() { podman logs "$NAME" >"$RUN_DIR/dnsteer.log" 2>&1 || true; tail_log "$RUN_DIR/dnsteer.log"; }
running() { [[ $(podman inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null) == true ]]; }

ready=0
for ((i = 0; i < 150; i++)); do
  running || break
  if curl -fsS --max-time 1 "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
((ready)) || { container_log; die "dnsteer in the container not ready (/readyz) within 30 s"; }
log "ready: /readyz 200 on 127.0.0.1:$METRICS_PORT"

failures=0
check() {  # check LABEL WANT GOT
  if [[ $3 == "$2" ]]; then
    printf '  ok   %-40s %s\n' "$1" "$3"
  else
    printf '  FAIL %-40s got [%s] want [%s]\n' "$1" "$3" "$2"
    failures=$((failures + 1))
  fi
}
ask() { dig +norec +time=2 +tries=1 +short @127.0.0.1 -p "$DNS_PORT" "$@" 2>&1 | sort | paste -sd' ' -; }
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$METRICS_PORT/$1" || true; }

check "in-process static.demo.test A" "198.51.100.1" "$(ask static.demo.test A)"
check "forwarded www.demo.test A" "192.0.2.80" "$(ask www.demo.test A)"
check "forwarded over TCP mail.demo.test A" "192.0.2.25" "$(ask +tcp mail.demo.test A)"
check "/readyz" "200" "$(status_of readyz)"
check "/healthz" "200" "$(status_of healthz)"
# The running process as the host sees it: uid/gid 65532, no capabilities.
cpid=$(podman inspect --format '{{.State.Pid}}' "$NAME")
check "process uid gid (host view)" "65532 65532" \
  "$(awk '/^Uid:/ { u = $2 } /^Gid:/ { g = $2 } END { print u, g }' "/proc/$cpid/status")"
check "process effective capabilities" "0000000000000000" \
  "$(awk '/^CapEff:/ { print $2 }' "/proc/$cpid/status")"

# ---- hot reload through the ..data swap -----------------------------------------------------
t0=$SECONDS
write_config 2 198.51.100.2
got=""
for ((i = 0; i < RELOAD_WAIT * 5; i++)); do
  got=$(ask static.demo.test A)
  [[ $got == 198.51.100.2 ]] && break
  sleep 0.2
done
check "after ..data swap (within ${RELOAD_WAIT}s)" "198.51.100.2" "$got"
log "reload seen after $((SECONDS - t0)) s"
check "reloads ok" "1" \
  "$(curl -s --max-time 2 "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk '$1 == "dnsteer_config_reloads_total{result=\"ok\"}" { print $2 }')"

# ---- SIGTERM: drain, then exit 0 within shutdown_grace --------------------------------------
t0=$(date +%s.%N)
start_bg podman-stop "$RUN_DIR/stop.log" podman stop -t $((GRACE_S + 10)) "$NAME"
STOP_PID=$LAST_PID
drain_seen=0
for ((i = 0; i < DRAIN_S * 10; i++)); do
  if [[ $(status_of readyz) == 503 ]]; then
    drain_seen=1
    check "during drain: in-process answer" "198.51.100.2" "$(ask static.demo.test A)"
    break
  fi
  sleep 0.1
done
check "/readyz 503 after SIGTERM" "1" "$drain_seen"
for ((i = 0; i < (GRACE_S + 15) * 10; i++)); do alive "$STOP_PID" || break; sleep 0.1; done
alive "$STOP_PID" && die "podman stop did not return"
wait "$STOP_PID" || true
elapsed=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
check "exit code after podman stop" "0" "$(podman inspect --format '{{.State.ExitCode}}' "$NAME")"
check "stopped within shutdown_grace (${GRACE_S}s)" "yes" \
  "$(awk -v e="$elapsed" -v g="$GRACE_S" 'BEGIN { print (e <= g ? "yes" : "no (" e " s)") }')"
log "stop took $elapsed s (drain ${DRAIN_S}s, grace ${GRACE_S}s)"
podman logs "$NAME" >"$RUN_DIR/dnsteer.log" 2>&1 || true

if ((failures)); then
  tail_log "$RUN_DIR/dnsteer.log" 40
  die "image-test: $failures check(s) failed"
fi
log "image-test: all checks passed in $((SECONDS - started_at)) s"
