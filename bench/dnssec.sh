#!/usr/bin/env bash
# DNSSEC online signing under load, on loopback with dnsperf (127.0.0.1 only, time-bounded).
#
#   bench/dnssec.sh
#   RUNS=3 DURATION=5 bench/dnssec.sh
#
# Starts, in one run:
#   * PowerDNS 4.7.3 (bind backend + bind-dnssec-db, KSK + ZSK ECDSAP256SHA256 active) serving
#     the signed zone sig.test. with LUA records (all, pickwhashed, pickhashed, ifportup against
#     a local TCP listener) and static A records, twice: enable-lua-records=yes ("pdns") and
#     enable-lua-records=shared ("pdns-shared"), same zone file, same dnssec db (same keys);
#   * dnsteer (release build) in front of "pdns": [zones].transfer = ["sig.test."] (LUA records
#     by AXFR), [[dnssec.keys]] = the active ZSK (`pdnsutil export-zone-key`), default signature
#     cache ("dnsteer"); and a second one with signature_cache_entries = 0 ("dnsteer-cold":
#     every answer signed).
# Checks that `dig +dnssec` through both dnsteers returns an RRSIG and that
# dnsteer_dnssec_signed_answers_total counts it (fails otherwise), then runs dnsperf on the LUA
# names (same query file everywhere) for RUNS rounds, interleaved (one run of every case per
# round), cases:
#   dnsteer-do1 (-D, warm cache)  dnsteer-do0  dnsteer-cold-do1 (-D)  pdns-do1 (-D)
#   pdns-shared-do1 (-D)
# Per run: QPS, latency, loss, server CPU per completed query (utime+stime deltas from
# /proc/PID/stat, as bench/dnsperf.sh; for dnsteer also PowerDNS's, its upstream) and, for
# dnsteer, the share of answers it signed (metric delta / queries completed). Prints medians and
# ratios (median over rounds of the within-round ratio, as bench/dnsperf.sh).
#
# Env: RUNS=3 DURATION=10 WARMUP=2 CLIENTS=8 THREADS=2 OUTSTANDING=256 WORKERS=2
#      MAX_SECONDS=900 (hard bound, checked before every dnsperf run)
#      DNSTEER_BIN=path (skip the release build), KEEP_RUN_DIR=1
# On a 2-core machine dnsperf competes with the server for CPU: compare CPU per query first.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"

printf 'command: %s\n' "$(for v in RUNS DURATION WARMUP CLIENTS THREADS OUTSTANDING WORKERS MAX_SECONDS DNSTEER_BIN; do
  [[ -n ${!v:-} ]] && printf '%s=%q ' "$v" "${!v}"; done)bench/dnssec.sh${*:+ $*}"

RUNS="${RUNS:-3}" DURATION="${DURATION:-10}" WARMUP="${WARMUP:-2}"
CLIENTS="${CLIENTS:-8}" THREADS="${THREADS:-2}" OUTSTANDING="${OUTSTANDING:-256}"
WORKERS="${WORKERS:-2}" MAX_SECONDS="${MAX_SECONDS:-900}"
for v in RUNS DURATION WARMUP CLIENTS THREADS OUTSTANDING WORKERS MAX_SECONDS; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || [[ $v == WARMUP && ${!v} == 0 ]] || die "$v must be a positive integer"
done
((DURATION <= 120)) || die "DURATION is capped at 120 s per run"
((RUNS >= 3)) || die "RUNS must be >= 3 (medians)"
DEADLINE=$((SECONDS + MAX_SECONDS))
ZONE=sig.test.

for tool in pdnsutil dnsperf dig curl python3; do
  command -v "$tool" >/dev/null || die "$tool not installed"
done
PDNS=$(pdns_server_bin)

if [[ -n ${DNSTEER_BIN:-} ]]; then
  BIN="$DNSTEER_BIN"
else
  log "building dnsteer (cargo build --release)"
  cargo build --release --bin dnsteer
  BIN="$TARGET_DIR/release/dnsteer"
fi
[[ -x $BIN ]] || die "no dnsteer binary at $BIN"

make_run_dir dnsteer-dnssec-bench
install_cleanup
TCK=$(getconf CLK_TCK)
RESULTS="$RUN_DIR/results.tsv"
printf 'case\trun\tqps\tlatency_ms\tlost_pct\tcpu_us_per_q\tbackend_cpu_us_per_q\tsigned_per_q\tsig_misses_per_q\n' >"$RESULTS"

declare -A PORT PID MPORT BACKEND
log "load before start: $(uptime)"

# ---- health-check target for ifportup (127.0.0.3 stays DOWN) ------------------------------
TCP_PORT=$(free_port)
start_bg tcp-target "$RUN_DIR/tcp.log" python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1024)
while True:
    c, _ = s.accept()
    c.close()
' "$TCP_PORT"

# ---- signed PowerDNS ------------------------------------------------------------------------
# The steps of tests/support/signed.rs: empty pdns.conf + `pdnsutil create-bind-db`, then
# add-zone-key ksk/zsk active ecdsa256 through the server's own config dir.
KEYDIR="$RUN_DIR/keys"
mkdir -p "$KEYDIR"
: >"$KEYDIR/pdns.conf"
pdnsutil --config-dir="$KEYDIR" create-bind-db "$KEYDIR/dnssec.db" >"$KEYDIR/create.log" 2>&1 ||
  { tail_log "$KEYDIR/create.log"; die "pdnsutil create-bind-db failed"; }

cat >"$RUN_DIR/sig.test.zone" <<EOF
\$ORIGIN sig.test.
\$TTL 300
@        IN SOA   ns1.sig.test. hostmaster.sig.test. 2024010101 3600 600 86400 60
@        IN NS    ns1.sig.test.
ns1      IN A     127.0.0.1
static   IN A     192.0.2.10
static   IN A     192.0.2.11
all      IN LUA A "all({'192.0.2.1','192.0.2.2','192.0.2.3'})"
whashed  IN LUA A "pickwhashed({{10,'192.0.2.1'},{20,'192.0.2.2'},{30,'192.0.2.3'}})"
hashed   IN LUA A "pickhashed({'192.0.2.1','192.0.2.2','192.0.2.3'})"
port  30 IN LUA A "ifportup($TCP_PORT, {'127.0.0.3','127.0.0.1'})"
EOF

write_pdns_conf() {  # write_pdns_conf NAME LUA-SETTING: config dir $RUN_DIR/NAME, sets PORT[NAME]
  local name="$1" lua="$2" dir="$RUN_DIR/$1" port
  mkdir -p "$dir"
  port=$(free_port)
  printf 'options { directory "%s"; };\nzone "sig.test" { type master; file "%s/sig.test.zone"; };\n' \
    "$dir" "$RUN_DIR" >"$dir/named.conf"
  cat >"$dir/pdns.conf" <<EOF
launch=bind
bind-config=$dir/named.conf
bind-dnssec-db=$KEYDIR/dnssec.db
local-address=127.0.0.1
local-port=$port
socket-dir=$dir
daemon=no
guardian=no
disable-syslog=yes
loglevel=3
log-dns-queries=no
security-poll-suffix=
api=no
webserver=no
edns-subnet-processing=yes
allow-axfr-ips=127.0.0.0/8
default-ksk-algorithm=ecdsa256
default-zsk-algorithm=ecdsa256
lua-health-checks-interval=5
enable-lua-records=$lua
# fair on 2 cores, as bench/dnsperf.sh: two SO_REUSEPORT receivers, packet cache on (default)
receiver-threads=2
reuseport=yes
distributor-threads=2
EOF
  PORT[$name]=$port
}

start_pdns() {  # start_pdns NAME
  local name="$1" dir="$RUN_DIR/$1" out
  start_bg "$name" "$dir/pdns.log" "$PDNS" --config-dir="$dir"
  PID[$name]=$LAST_PID
  wait_dns "${PORT[$name]}" sig.test SOA "$LAST_PID" 20 || { tail_log "$dir/pdns.log"; die "$name did not start"; }
  for _ in $(seq 1 75); do
    out=$(dig +norec +dnssec +tcp +time=1 +tries=1 @127.0.0.1 -p "${PORT[$name]}" sig.test DNSKEY 2>/dev/null) || true
    grep -q 'RRSIG' <<<"$out" && return 0
    sleep 0.2
  done
  tail_log "$dir/pdns.log"
  die "$name does not serve a signed DNSKEY RRset"
}

write_pdns_conf pdns yes
write_pdns_conf pdns-shared shared
pdnsutil --config-dir="$RUN_DIR/pdns" add-zone-key "$ZONE" ksk active ecdsa256 >"$KEYDIR/ksk.id"
pdnsutil --config-dir="$RUN_DIR/pdns" add-zone-key "$ZONE" zsk active ecdsa256 >"$KEYDIR/zsk.id"
ZSK_ID=$(tr -d '[:space:]' <"$KEYDIR/zsk.id")
[[ $ZSK_ID =~ ^[0-9]+$ ]] || die "add-zone-key zsk printed '$ZSK_ID', not a key id"
pdnsutil --config-dir="$RUN_DIR/pdns" list-keys "$ZONE" >"$KEYDIR/list-keys.txt" 2>&1
awk -v id="$ZSK_ID" '$2 == "ZSK" && /Act/ && $(NF-2) == id { ok = 1 } END { exit !ok }' \
  "$KEYDIR/list-keys.txt" || { tail_log "$KEYDIR/list-keys.txt"; die "ZSK $ZSK_ID is not active"; }
pdnsutil --config-dir="$RUN_DIR/pdns" export-zone-key "$ZONE" "$ZSK_ID" >"$KEYDIR/zsk.private"
chmod 0400 "$KEYDIR/zsk.private"
grep -q '^Private-key-format:' "$KEYDIR/zsk.private" || die "export-zone-key printed no private key"
start_pdns pdns
start_pdns pdns-shared

# ---- dnsteer ------------------------------------------------------------------------------
start_dnsteer() {  # start_dnsteer NAME CACHE-ENTRIES(or empty for the default)
  local name="$1" cache="$2" dir="$RUN_DIR/$1" port mport cfg
  mkdir -p "$dir"
  port=$(free_port) mport=$(free_port)
  cfg="$dir/dnsteer.toml"
  {
    printf '[server]\nlisten = ["127.0.0.1:%s"]\nworkers = %s\n\n' "$port" "$WORKERS"
    printf '[metrics]\nlisten = "127.0.0.1:%s"\n\n' "$mport"
    printf '[logging]\nlevel = "warn"\nformat = "text"\nquery_sample_rate = 0.01\n\n'
    printf '[ratelimit]\nenabled = false\n\n'
    printf '[upstream]\nservers = ["127.0.0.1:%s"]\n\n' "${PORT[pdns]}"
    printf '[probes]\ninterval = "2s"\ntimeout = "1s"\n\n'
    printf '[zones]\ntransfer = ["%s"]\n\n' "$ZONE"
    printf '[dnssec]\n'
    [[ -z $cache ]] || printf 'signature_cache_entries = %s\n' "$cache"
    printf '\n[[dnssec.keys]]\nzone = "%s"\nfile = "%s"\n' "$ZONE" "$KEYDIR/zsk.private"
  } >"$cfg"
  start_bg "$name" "$dir/dnsteer.log" "$BIN" --config "$cfg"
  PORT[$name]=$port PID[$name]=$LAST_PID MPORT[$name]=$mport BACKEND[$name]=${PID[pdns]}
  wait_http "http://127.0.0.1:$mport/readyz" "$LAST_PID" 30 || { tail_log "$dir/dnsteer.log"; die "$name not ready"; }
}

metric_total() {  # metric_total NAME METRIC: the counter from dnsteer's /metrics, summed over labels
  curl -fsS --max-time 2 "http://127.0.0.1:${MPORT[$1]}/metrics" |
    awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d\n", s }'
}
signed_total() { metric_total "$1" dnsteer_dnssec_signed_answers_total; }
misses_total() { metric_total "$1" dnsteer_dnssec_signatures_made_total; }

# check_signed NAME: a DO=1 query through dnsteer gets an RRSIG, signed by dnsteer (metric).
check_signed() {
  local name="$1" before after out i
  for i in $(seq 1 100); do
    before=$(signed_total "$name")
    out=$(dig +dnssec +norec +time=1 +tries=1 @127.0.0.1 -p "${PORT[$name]}" whashed.sig.test A 2>&1) || true
    after=$(signed_total "$name")
    if grep -q 'status: NOERROR' <<<"$out" && grep -qE '^whashed\.sig\.test\..*RRSIG[[:space:]]+A ' <<<"$out" &&
      ((after > before)); then
      log "$name: DO=1 answer carries an RRSIG signed by dnsteer (signed_answers_total $before -> $after)"
      return 0
    fi
    sleep 0.2
  done
  printf '%s\n' "$out" | sed 's/^/    /' >&2
  curl -fsS --max-time 2 "http://127.0.0.1:${MPORT[$name]}/metrics" | grep -i dnssec | sed 's/^/    /' >&2 || true
  tail_log "$RUN_DIR/$name/dnsteer.log"
  die "$name: no RRSIG signed by dnsteer on a DO=1 answer after 20 s (signed_answers_total $before -> $after)"
}

start_dnsteer dnsteer ""
start_dnsteer dnsteer-cold 0
check_signed dnsteer
check_signed dnsteer-cold

# ---- cases --------------------------------------------------------------------------------
mkdir -p "$RUN_DIR/queries"
printf '%s\n' "all.sig.test A" "whashed.sig.test A" "hashed.sig.test A" "port.sig.test A" >"$RUN_DIR/queries/lua"
CASES=(dnsteer-do1 dnsteer-do0 dnsteer-cold-do1 pdns-do1 pdns-shared-do1)
declare -A CASE_SERVER=([dnsteer-do1]=dnsteer [dnsteer-do0]=dnsteer [dnsteer-cold-do1]=dnsteer-cold
  [pdns-do1]=pdns [pdns-shared-do1]=pdns-shared)

run_one() {  # run_one CASE RUN SECONDS RECORD(0|1)
  local c="$1" run="$2" secs="$3" record="$4" s pid backend out t0 t1 b0=0 b1=0 m0=0 m1=0 x0=0 x1=0 do_flag=()
  s=${CASE_SERVER[$c]} pid=${PID[${CASE_SERVER[$c]}]} backend=${BACKEND[${CASE_SERVER[$c]}]:-}
  [[ $c == *-do1 ]] && do_flag=(-D)
  ((SECONDS + secs + 30 <= DEADLINE)) || die "MAX_SECONDS=$MAX_SECONDS would be exceeded: stopping"
  out="$RUN_DIR/dnsperf-$c-$run.txt"
  [[ -n ${MPORT[$s]:-} ]] && m0=$(signed_total "$s") x0=$(misses_total "$s")
  t0=$(cpu_ticks "$pid")
  [[ -n $backend ]] && b0=$(cpu_ticks "$backend")
  timeout $((secs + 30)) dnsperf -s 127.0.0.1 -p "${PORT[$s]}" -d "$RUN_DIR/queries/lua" "${do_flag[@]}" \
    -l "$secs" -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" -t 2 >"$out" 2>&1 ||
    { tail_log "$out"; die "dnsperf failed against $c"; }
  t1=$(cpu_ticks "$pid")
  [[ -n $backend ]] && b1=$(cpu_ticks "$backend")
  [[ -n ${MPORT[$s]:-} ]] && m1=$(signed_total "$s") x1=$(misses_total "$s")
  alive "$pid" || die "$s died during the run"
  ((record)) || return 0
  awk -v c="$c" -v run="$run" -v d="$((t1 - t0))" -v bd="$((b1 - b0))" -v md="$((m1 - m0))" -v xd="$((x1 - x0))" \
    -v tck="$TCK" -v has_backend="${backend:+1}" '
    /Queries completed:/ { done = $3 }
    /Queries lost:/      { lost = $4; gsub(/[()%]/, "", lost) }
    /Queries per second:/ { qps = $4 }
    /Average Latency \(s\):/ { lat = $4 * 1000 }
    END {
      if (done == 0) { print "no queries completed for " c > "/dev/stderr"; exit 1 }
      cpu = d / tck * 1e6 / done
      bcpu = has_backend ? sprintf("%.3f", bd / tck * 1e6 / done) : "-"
      sig = has_backend ? sprintf("%.3f", md / done) : "-"
      miss = has_backend ? sprintf("%.4f", xd / done) : "-"
      printf "%s\t%s\t%.0f\t%.3f\t%s\t%.3f\t%s\t%s\t%s\n", c, run, qps, lat, lost, cpu, bcpu, sig, miss
    }' "$out" >>"$RESULTS"
  tail -n1 "$RESULTS" | awk -F'\t' '{ printf "  %-16s run %s: %8s qps  %7s ms  lost %5s%%  cpu %7s us/q  pdns %6s us/q  signed/q %s  sig misses/q %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }' >&2
}

log "servers: $(for s in pdns pdns-shared dnsteer dnsteer-cold; do printf '%s=127.0.0.1:%s ' "$s" "${PORT[$s]}"; done)"
total=$(((WARMUP + DURATION * RUNS) * ${#CASES[@]}))
log "about ${total} s of load; dnsperf -c $CLIENTS -T $THREADS -q $OUTSTANDING -l $DURATION, $RUNS rounds"
((SECONDS + total <= DEADLINE)) || die "about ${total} s of load exceeds MAX_SECONDS=$MAX_SECONDS"
if ((WARMUP > 0)); then
  log "warm-up ${WARMUP} s each"
  for c in "${CASES[@]}"; do run_one "$c" 0 "$WARMUP" 0; done
fi
LOAD_START=$(uptime)
for run in $(seq 1 "$RUNS"); do
  log "round $run/$RUNS (load: $(cut -d, -f3- <<<"$(uptime)" | sed 's/^ *//'))"
  for c in "${CASES[@]}"; do run_one "$c" "$run" "$DURATION" 1; done
done
LOAD_END=$(uptime)

mkdir -p "$TARGET_DIR/bench"
keep="$TARGET_DIR/bench/dnssec-$(date +%Y%m%d-%H%M%S).tsv"
cp "$RESULTS" "$keep"

echo
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(nproc) cores"
echo "load at start of measurement: ${LOAD_START}"
echo "load at end of measurement:   ${LOAD_END}"
python3 - "$RESULTS" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(vals):
    vals = [float(v) for v in vals if v not in ("-", "")]
    return statistics.median(vals) if vals else None
cases = []
for r in rows:
    if r["case"] not in cases:
        cases.append(r["case"])
print()
print("Medians (LUA names all/whashed/hashed/port; CPU = server process time per completed query;")
print("pdns us/q = PowerDNS behind dnsteer; signed/q = dnsteer_dnssec_signed_answers_total delta / queries;")
print("misses/q = dnsteer_dnssec_signatures_made_total delta / queries = signatures computed per query)")
print(f"{'case':<17} {'qps':>9} {'lat ms':>8} {'lost %':>7} {'cpu us/q':>9} {'pdns us/q':>10} {'signed/q':>9} {'misses/q':>9}")
for c in cases:
    rs = [r for r in rows if r["case"] == c]
    m = {k: med([r[k] for r in rs]) for k in ("qps", "latency_ms", "lost_pct", "cpu_us_per_q", "backend_cpu_us_per_q", "signed_per_q", "sig_misses_per_q")}
    f = lambda v, p: (p % v) if v is not None else "-"
    print(f"{c:<17} {m['qps']:>9.0f} {m['latency_ms']:>8.3f} {m['lost_pct']:>7.2f} {m['cpu_us_per_q']:>9.2f} "
          f"{f(m['backend_cpu_us_per_q'], '%.2f'):>10} {f(m['signed_per_q'], '%.3f'):>9} {f(m['sig_misses_per_q'], '%.4f'):>9}")
print()
print("Ratios A/B: median over rounds of the within-round ratio (A and B measured in the same round)")
by = {(r["case"], r["run"]): r for r in rows}
def ratio(a, b, key):
    vals = [float(r[key]) / float(by[(b, run)][key]) for (c, run), r in by.items()
            if c == a and (b, run) in by and float(by[(b, run)][key]) > 0]
    return (statistics.median(vals) if vals else float("nan")), len(vals)
for a, b, target in [("dnsteer-do1", "dnsteer-do0", 0.8), ("dnsteer-do1", "pdns-do1", 30),
                     ("dnsteer-do1", "pdns-shared-do1", None), ("dnsteer-cold-do1", "pdns-do1", None),
                     ("dnsteer-cold-do1", "dnsteer-do1", None)]:
    q, n = ratio(a, b, "qps")
    cp, _ = ratio(b, a, "cpu_us_per_q")
    t = f"   target qps >= {target}: {'met' if q >= target else 'NOT met'}" if target else ""
    print(f"  {a + ' / ' + b:<36} qps x{q:7.2f}   cpu/query {b}/{a} x{cp:7.2f}   ({n} rounds){t}")
cold = med([r["sig_misses_per_q"] for r in rows if r["case"] == "dnsteer-cold-do1"])
if cold is not None and cold < 0.9:
    print()
    print(f"WARNING: dnsteer-cold made {cold:.4f} signatures per query, not ~1: with")
    print("signature_cache_entries = 0 the signature cache is still there (SignatureCache::new rounds")
    print("the size up to 4 entries per thread), so 'cold' above is NOT a cold-signing number.")
PY
log "raw results: $keep"
