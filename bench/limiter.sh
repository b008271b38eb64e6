#!/usr/bin/env bash
# Rate limiter on the real binary, loopback only (needs root: bench/flood.py spoofs 127.x.y.z
# sources through a raw socket):
#   1. memory: dnsteer VmRSS after start with max_tracked_sources = 1000000, then after a flood
#      of SOURCES distinct sources (default 1000000), one query each;
#   2. CPU per query of a blocked source (qps=100, action="drop", one source sending far above
#      its rate) vs an exempt source getting in-process answers, same sender, same packet.
#      CPU = utime+stime delta of dnsteer (/proc/PID/stat) / queries counted in its /metrics.
#
#   bench/limiter.sh        Env: DNSTEER_BIN=path  SOURCES=1000000  SECONDS_EACH=10  RUNS=3
#                                LIMIT_MODE=qps|rrl (rrl: [ratelimit] mode = "rrl" keyed per /32,
#                                memory part only: every spoofed source is its own RRL entry)
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"

LIMIT_MODE="${LIMIT_MODE:-qps}"
case $LIMIT_MODE in qps | rrl) ;; *) die "LIMIT_MODE must be qps or rrl" ;; esac
SOURCES="${SOURCES:-1000000}" SECONDS_EACH="${SECONDS_EACH:-10}" RUNS="${RUNS:-3}"
[[ $(id -u) == 0 ]] || die "needs root (raw socket for spoofed loopback sources)"
BIN="${DNSTEER_BIN:-$TARGET_DIR/release/dnsteer}"
[[ -x $BIN ]] || die "no dnsteer binary at $BIN (cargo build --release)"
make_run_dir dnsteer-limiter
install_cleanup
TCK=$(getconf CLK_TCK)
FLOOD=(timeout 300 python3 "$ROOT/bench/flood.py")

port=$(free_port) mport=$(free_port) upstream=$(free_port)
# Exempt source for the "answered" case: 127.200.0.0, i.e. flood.py --first 13041664.
EXEMPT_FIRST=$(((200 << 16) - (1 << 16)))
cat >"$RUN_DIR/dnsteer.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
workers = 2
[metrics]
listen = "127.0.0.1:$mport"
[logging]
level = "warn"
format = "text"
query_sample_rate = 0.01
[ratelimit]
enabled = true
$(if [[ $LIMIT_MODE == rrl ]]; then printf 'mode = "rrl"\nipv4_prefix = 32\nresponses_per_second = 100\n'; fi)
qps = 100
burst = 100
block_for = "60s"
action = "drop"
max_tracked_sources = 1000000
exempt = ["127.200.0.0/16"]
[upstream]
# nothing listens here: every query below is answered in-process or limited
servers = ["127.0.0.1:$upstream"]

[[records]]
name = "static.demo.test."
type = "A"
ttl = 300
content = ["192.0.2.10", "192.0.2.11"]
EOF
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$PID/status"; }

# Baseline: the same config with a 1024-source table, to show the table's share of RSS.
sed -e 's/^max_tracked_sources = .*/max_tracked_sources = 1024/' "$RUN_DIR/dnsteer.toml" >"$RUN_DIR/small.toml"
start_bg dnsteer-small "$RUN_DIR/small.log" "$BIN" --config "$RUN_DIR/small.toml"
PID=$LAST_PID
wait_http "http://127.0.0.1:$mport/healthz" "$PID" 30 || { tail_log "$RUN_DIR/small.log"; die "dnsteer did not start"; }
sleep 1
rss_small=$(rss)
log "VmRSS after start with max_tracked_sources = 1024: ${rss_small} kB"
stop_pid "$PID"

start_bg dnsteer "$RUN_DIR/dnsteer.log" "$BIN" --config "$RUN_DIR/dnsteer.toml"
PID=$LAST_PID
wait_http "http://127.0.0.1:$mport/healthz" "$PID" 30 || { tail_log "$RUN_DIR/dnsteer.log"; die "dnsteer did not start"; }
sleep 1
# counter DECISION: dnsteer_queries_total summed over transports for one decision label.
counter() {
  curl -fsS --max-time 2 "http://127.0.0.1:$mport/metrics" |
    awk -v d="decision=\"$1\"" '/^dnsteer_queries_total\{/ && index($0, d) { s += $NF } END { printf "%d\n", s }'
}

rss0=$(rss)
log "VmRSS after start: ${rss0} kB"
q0=$(($(counter rule) + $(counter limited)))
log "flooding from $SOURCES distinct sources (one query each)"
"${FLOOD[@]}" "$port" static.demo.test --sources "$SOURCES" | tee "$RUN_DIR/flood.txt" >&2
sleep 1
q1=$(($(counter rule) + $(counter limited)))
rss1=$(rss)
log "VmRSS after the flood: ${rss1} kB (+$((rss1 - rss0)) kB), queries counted by dnsteer: $((q1 - q0))"
if [[ $LIMIT_MODE == rrl ]]; then
  echo
  echo "memory (rrl): VmRSS ${rss_small} kB with max_tracked_sources = 1024; with 1000000: ${rss0} kB after start,"
  echo "  ${rss1} kB after $SOURCES distinct sources ($((q1 - q0)) queries counted): +$((rss1 - rss0)) kB"
  exit 0
fi

# cpu_per_query DECISION FLOOD-ARGS...: us of dnsteer CPU per query counted under DECISION.
cpu_per_query() {
  local d="$1" c0 c1 t0 t1
  shift
  c0=$(counter "$d") t0=$(cpu_ticks "$PID")
  "${FLOOD[@]}" "$port" static.demo.test "$@" --seconds "$SECONDS_EACH" >"$RUN_DIR/last.txt"
  sleep 0.5
  c1=$(counter "$d") t1=$(cpu_ticks "$PID")
  alive "$PID" || die "dnsteer died"
  awk -v dt="$((t1 - t0))" -v n="$((c1 - c0))" -v tck="$TCK" -v d="$d" -v sent="$(cat "$RUN_DIR/last.txt")" \
    'BEGIN { if (n == 0) { print "no " d " queries counted" > "/dev/stderr"; exit 1 }
             printf "%s\t%d\t%.3f\t%.0f\t%s\n", d, n, dt / tck * 1e6 / n, n / '"$SECONDS_EACH"', sent }'
}

printf 'decision\tqueries\tcpu_us_per_q\tqps\tsender\n' >"$RUN_DIR/cpu.tsv"
for run in $(seq 1 "$RUNS"); do
  log "round $run/$RUNS: blocked source (127.1.0.0), then exempt source (127.200.0.0)"
  cpu_per_query limited --sources 1 --first 0 | tee -a "$RUN_DIR/cpu.tsv" >&2
  cpu_per_query rule --sources 1 --first "$EXEMPT_FIRST" | tee -a "$RUN_DIR/cpu.tsv" >&2
done

python3 - "$RUN_DIR/cpu.tsv" "$rss0" "$rss1" "$SOURCES" "$((q1 - q0))" "$rss_small" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
rss0, rss1, sources, counted, rss_small = (int(x) for x in sys.argv[2:7])
print()
print(f"memory: VmRSS {rss_small} kB with max_tracked_sources = 1024; with 1000000: "
      f"{rss0} kB (+{rss0 - rss_small} kB; table = 2^20 slots x 16 B = 16384 kB)")
print(f"memory: VmRSS {rss0} kB after start, {rss1} kB after {sources} distinct sources "
      f"({counted} queries counted): +{rss1 - rss0} kB")
med = {}
for d in ("limited", "rule"):
    v = [float(r["cpu_us_per_q"]) for r in rows if r["decision"] == d]
    q = [float(r["qps"]) for r in rows if r["decision"] == d]
    med[d] = statistics.median(v)
    print(f"{d:<8} cpu {med[d]:.3f} us/query (median of {len(v)}; runs {', '.join('%.3f' % x for x in v)}), "
          f"{statistics.median(q):.0f} queries/s counted")
print(f"blocked/answered cpu per query: x{med['limited'] / med['rule']:.2f}")
PY
