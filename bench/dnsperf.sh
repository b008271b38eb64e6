#!/usr/bin/env bash
# Load comparison on loopback with dnsperf (127.0.0.1 only, time-bounded).
#
#   bench/dnsperf.sh                 # MODE=forward: PowerDNS direct vs dnsdist 1.7 vs dnsteer,
#                                    #   both proxies forwarding to the same PowerDNS
#   MODE=lua bench/dnsperf.sh        # in-process answers: PowerDNS LUA records
#                                    #   (enable-lua-records=yes and =shared), gdnsd (static +
#                                    #   multifo), dnsteer [[records]]
#
# Each (query set, server) pair runs `dnsperf -l DURATION -c CLIENTS -T THREADS -q OUTSTANDING`
# RUNS (>= 3) times, interleaved (run 1 of every server, then run 2, ...), after a short warm-up.
# Recorded per run: QPS, average latency, loss, and the server's CPU time per completed query
# (utime+stime deltas of its process from /proc/PID/stat; for the proxies also PowerDNS's).
# Prints medians, and dnsteer's ratios as the median over rounds of the ratio within one round
# (both servers measured back to back, so slow drift of the shared machine cancels).
# Keeps the raw TSV in target/bench/. The whole run is bounded by MAX_SECONDS.
#
# Env: MODE=forward|lua  RUNS=3  DURATION=10  WARMUP=2  CLIENTS=8  THREADS=2  OUTSTANDING=256
#      WORKERS=2   dnsteer [server].workers (PowerDNS/dnsdist/gdnsd get 2 threads as well)
#      UDP_STEERING=hash|cpu  dnsteer [server].udp_steering (default: not written, i.e. hash);
#                  never written for DNSTEER_BIN_B with DNSTEER_B_LEGACY=1
#      MAXQPS=N    forward mode: also start dnsdist-rl with addAction(MaxQPSIPRule(N), DropAction())
#                  and dnsteer-rl with [ratelimit] qps=burst=N, measured interleaved with the
#                  unlimited dnsdist/dnsteer (cost of the limiter; pick N far above the achieved
#                  QPS so nothing is dropped)
#      RRL=N       also start dnsteer-rrl: [ratelimit] mode = "rrl", responses_per_second = N
#                  (at most 1000000) and a byte budget of 2^40/s, measured interleaved with the
#                  unlimited dnsteer (the cost of RRL accounting; pick N above the achieved QPS)
#      ECS=1       both proxies add ECS to forwarded queries (default off, as in dnsdist)
#      CACHE=1     forward mode: both proxies cache answers (dnsteer [cache] enabled = true,
#                  max_ttl 60 s; dnsdist newPacketCache(100000, {maxTTL=60}) on its default pool,
#                  TTLs not aged in either: dontAge / age_ttls = false)
#      RATE=N      fixed offered load: every dnsperf run is limited to N queries/s (`-Q N`) and
#                  verbose (`-v`, one line per answer with its latency), and the tables gain
#                  p50/p99/p99.9 latency per run (medians over rounds); pick N below every
#                  server's saturation so the percentiles show service time, not queueing
#      CLIENT_ADDRESS=none|ecs|proxy  dnsteer [upstream].client_address (default: ecs with ECS=1,
#                  else none). "proxy" puts dnsteer behind a second PowerDNS, `pdns-pp`, started
#                  with proxy-protocol-from=127.0.0.0/8 (it then requires the PROXY v2 header, so
#                  dnsperf and dnsdist keep using the plain one); its CPU is dnsteer's backend CPU
#      ALSO_PROXY=1  forward mode: also start `dnsteer-proxy` (client_address = "proxy", behind
#                  pdns-pp), measured interleaved with the others (ecs vs proxy in one run)
#      SOURCES=N   many clients: each measurement runs N dnsperf processes in parallel, process i
#                  sending from 127.0.i.1 (N <= 250, one /24 each) with -c ceil(CLIENTS/N) -T 1
#                  -q max(1, OUTSTANDING/N) and -Q RATE/N; QPS and completed queries are summed
#      DNSTEER_B_LEGACY=1  write `add_ecs` instead of `client_address` (and no [cache]) for
#                  DNSTEER_BIN_B: binaries before c6e6738 reject client_address
#      LOG_SAMPLE=0.01  dnsteer logging.query_sample_rate (the default; the log goes to a file)
#      MAX_SECONDS=1800  hard bound on the whole run (checked before every dnsperf run)
#      SETS="..."  lua mode: which query sets (default "static health lua"; also "geo": a
#                  country()/continent() conditional, "reverse": a createReverse wildcard over
#                  192.0.2.0/24 — with SOURCES=3 the clients sit in NL, JP and US per the test
#                  mmdb, 127.0.i.1; PowerDNS gets the geoip backend on the same mmdb)
#      DNSTEER_BIN=path (skip the release build), SKIP_DEPS=1, KEEP_RUN_DIR=1
#      DNSTEER_BIN_B=path  also run a second dnsteer binary as server "dnsteer-b", interleaved
#                  with the first (A/B of two builds in one run)
#      ONLY="..."  measure only these servers (e.g. ONLY="gdnsd dnsteer"); the others still
#                  start when another server needs them (PowerDNS behind the proxies)
# Also recorded per run: dnsperf's own CPU per query (client_us_q), the whole machine's busy
# share of its 2 cores over the run from /proc/stat (busy_pct: 100 = both cores saturated, other
# users included), the 1-minute load average at the start (load1) and the packet-cache hit rate
# of the PowerDNS that answered (pdns_pc_hit_pct, from `pdns_control show packetcache-hit/-miss`). At the end, dnsteer's
# dnsteer_cache_* counters of every dnsteer instance are printed (hit rate) when CACHE=1, and
# its upstream requests and errors (a timed-out query holds a dnsperf slot until its retry).
# On a 2-core machine dnsperf competes with the server for CPU: compare CPU per query first,
# QPS second (shared/notes/rust-stack.md §8).
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"

MODE="${MODE:-forward}"
RUNS="${RUNS:-3}" DURATION="${DURATION:-10}" WARMUP="${WARMUP:-2}"
CLIENTS="${CLIENTS:-8}" THREADS="${THREADS:-2}" OUTSTANDING="${OUTSTANDING:-256}"
MAXQPS="${MAXQPS:-}" RRL="${RRL:-}" ECS="${ECS:-0}" CACHE="${CACHE:-0}" RATE="${RATE:-}" LOG_SAMPLE="${LOG_SAMPLE:-0.01}" WORKERS="${WORKERS:-2}"
UDP_STEERING="${UDP_STEERING:-}"
MAX_SECONDS="${MAX_SECONDS:-1800}"
SOURCES="${SOURCES:-1}" ALSO_PROXY="${ALSO_PROXY:-0}"
CLIENT_ADDRESS="${CLIENT_ADDRESS:-$([[ $ECS == 1 ]] && echo ecs || echo none)}"
case $CLIENT_ADDRESS in none | ecs | proxy) ;; *) die "CLIENT_ADDRESS must be none, ecs or proxy" ;; esac
[[ $SOURCES =~ ^[0-9]+$ ]] && ((SOURCES >= 1 && SOURCES <= 250)) || die "SOURCES must be 1..250"
SETS="${SETS:-static health lua}"
case $MODE in forward | lua) ;; *) die "MODE must be forward or lua" ;; esac
for v in RUNS DURATION WARMUP CLIENTS THREADS OUTSTANDING WORKERS MAX_SECONDS; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || [[ $v == WARMUP && ${!v} == 0 ]] || die "$v must be a positive integer"
done
((DURATION <= 120)) || die "DURATION is capped at 120 s per run"
((RUNS >= 3)) || die "RUNS must be >= 3 (medians)"
[[ -z $MAXQPS || $MAXQPS =~ ^[0-9]+$ ]] || die "MAXQPS must be an integer"
[[ $MODE == forward || -z $MAXQPS ]] || die "MAXQPS applies to MODE=forward only"
DEADLINE=$((SECONDS + MAX_SECONDS))

[[ ${SKIP_DEPS:-0} == 1 ]] || bash "$ROOT/scripts/install-deps.sh"
if [[ -n ${DNSTEER_BIN:-} ]]; then
  BIN="$DNSTEER_BIN"
else
  log "building dnsteer (cargo build --release)"
  cargo build --release --bin dnsteer
  BIN="$TARGET_DIR/release/dnsteer"
fi
[[ -x $BIN ]] || die "no dnsteer binary at $BIN"

make_run_dir dnsteer-bench
install_cleanup
TCK=$(getconf CLK_TCK)
TIMEFORMAT='%U %S'
RESULTS="$RUN_DIR/results.tsv"
printf 'set\tserver\trun\tqps\tlatency_ms\tlost_pct\tcpu_us_per_q\tbackend_cpu_us_per_q\tp50_ms\tp99_ms\tp999_ms\tclient_us_q\tbusy_pct\tload1\tpdns_pc_hit_pct\n' >"$RESULTS"

declare -A PORT PID BACKEND MPORT PDNS_DIR
SERVERS=()

# ---- lua mode's geo and reverse sets: the same bodies in PowerDNS and dnsteer --------------
GEO_LUA="if country('US') then return '192.0.2.31' elseif continent('EU') then return '192.0.2.32' else return '192.0.2.33' end"
GEO_LUA_ZONE="geo IN LUA A \";$GEO_LUA\""
REVERSE_LUA="createReverse('ip-%1%-%2%-%3%-%4%.demo.test')"

# ---- health-check target for ifportup / multifo (free port; 127.0.0.3 stays DOWN) ---------
TCP_PORT=$(free_port)
HTTP_PORT=$(free_port)   # nothing listens here: keeps the zone's ifurlup away from fixed ports
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

# ---- servers ------------------------------------------------------------------------------
start_pdns() {  # start_pdns NAME LUA-SETTING [EXTRA-SETTING...]
  local name="$1" lua="$2" dir="$RUN_DIR/$1" port
  shift 2
  mkdir -p "$dir"
  port=$(free_port)
  render_pdns_conf "$dir" "$port"
  sed -i -e "s/8054/$TCP_PORT/g" -e "s/8053/$HTTP_PORT/g" "$dir/demo.test.zone"
  if [[ $MODE == lua ]]; then
    # The geo and reverse sets: a country()/continent() conditional (geoip backend on the test
    # mmdb, as dnsteer's [geoip]) and a createReverse wildcard; the same bodies as dnsteer's.
    printf '%s\n' "$GEO_LUA_ZONE" >>"$dir/demo.test.zone"
    printf '%s\n' '$ORIGIN 2.0.192.in-addr.arpa.' '$TTL 300' \
      '@ IN SOA ns1.demo.test. hostmaster.demo.test. 1 3600 600 86400 60' '@ IN NS ns1.demo.test.' \
      "* IN LUA PTR \"$REVERSE_LUA\"" >"$dir/reverse.zone"
    printf 'zone "2.0.192.in-addr.arpa" { type master; file "%s/reverse.zone"; };\n' "$dir" >>"$dir/named.conf"
    printf '%s\n' "launch=bind,geoip" "geoip-database-files=$ROOT/geoip/test-city.mmdb" >>"$dir/pdns.conf"
  fi
  # Fair on 2 cores: two SO_REUSEPORT receivers, defaults otherwise (packet cache included:
  # it is part of how PowerDNS is run).
  printf '%s\n' "receiver-threads=2" "reuseport=yes" "distributor-threads=2" "loglevel=3" \
    "enable-lua-records=$lua" "$@" >>"$dir/pdns.conf"
  start_bg "$name" "$dir/pdns.log" "$(pdns_server_bin)" --config-dir="$dir"
  PORT[$name]=$port PID[$name]=$LAST_PID PDNS_DIR[$name]=$dir
  if [[ " $* " == *" proxy-protocol-from="* ]]; then
    # requires a PROXY header: dig cannot check it; dnsteer's readiness (its probe) will.
    sleep 1
    alive "$LAST_PID" || { tail_log "$dir/pdns.log"; die "$name did not start"; }
    return 0  # not a measured server: dnsperf cannot talk to it
  fi
  wait_dns "$port" demo.test SOA "$LAST_PID" 20 || { tail_log "$dir/pdns.log"; die "$name did not start"; }
  SERVERS+=("$name")
}

start_dnsdist() {  # start_dnsdist NAME MAXQPS(or empty): forwards to pdns
  local name="$1" maxqps="$2" dir="$RUN_DIR/$1" port
  mkdir -p "$dir"
  port=$(free_port)
  {
    if [[ $CACHE == 1 ]]; then
      echo "-- packet cache, as dnsteer's [cache] in this run"
    else
      echo "-- no packet cache: every query goes to PowerDNS, as with dnsteer"
    fi
    echo "setSecurityPollSuffix('')"
    echo "setLocal('127.0.0.1:$port', {reusePort=true})"
    echo "addLocal('127.0.0.1:$port', {reusePort=true})   -- 2 listener threads for 2 cores"
    echo "setMaxUDPOutstanding(65535)"
    echo "newServer({address='127.0.0.1:${PORT[pdns]}', sockets=2, checkName='demo.test.', useClientSubnet=$([[ $ECS == 1 ]] && echo true || echo false)})"
    echo "setServerPolicy(firstAvailable)"
    [[ -n $maxqps ]] && echo "addAction(MaxQPSIPRule($maxqps), DropAction())"
    [[ $CACHE == 1 ]] && echo "getPool(''):setCache(newPacketCache(100000, {maxTTL=60, dontAge=true}))"
    true
  } >"$dir/dnsdist.conf"
  start_bg "$name" "$dir/dnsdist.log" dnsdist --supervised --disable-syslog -C "$dir/dnsdist.conf"
  PORT[$name]=$port PID[$name]=$LAST_PID BACKEND[$name]=${PID[pdns]} PDNS_DIR[$name]=${PDNS_DIR[pdns]}
  wait_dns "$port" demo.test SOA "$LAST_PID" 20 || { tail_log "$dir/dnsdist.log"; die "$name did not start"; }
  SERVERS+=("$name")
}

start_dnsteer() {  # start_dnsteer NAME WITH-RECORDS(0|1) MAXQPS(or empty) [BINARY [CLIENT-ADDRESS [LEGACY]]]
  local name="$1" records="$2" maxqps="$3" bin="${4:-$BIN}" ca="${5:-$CLIENT_ADDRESS}" legacy="${6:-0}"
  local dir="$RUN_DIR/$1" port mport cfg backend=pdns
  [[ $ca == proxy ]] && backend=pdns-pp
  mkdir -p "$dir"
  port=$(free_port) mport=$(free_port)
  cfg="$dir/dnsteer.toml"
  {
    printf '[server]\nlisten = ["127.0.0.1:%s"]\nworkers = %s\n' "$port" "$WORKERS"
    if [[ -n $UDP_STEERING ]] && ! ((legacy)); then printf 'udp_steering = "%s"\n' "$UDP_STEERING"; fi
    printf '\n'
    printf '[metrics]\nlisten = "127.0.0.1:%s"\n\n' "$mport"
    printf '[logging]\nlevel = "warn"\nformat = "text"\nquery_sample_rate = %s\n\n' "$LOG_SAMPLE"
    if [[ $maxqps == rrl:* ]]; then
      # RRL on, limits far above the load: the cost of accounting every response (both the
      # response and the byte budget lookups run), nothing limited.
      printf '[ratelimit]\nmode = "rrl"\nresponses_per_second = %s\nbytes_per_second = %s\n\n' \
        "${maxqps#rrl:}" "$((1 << 40))"
    elif [[ -n $maxqps ]]; then
      printf '[ratelimit]\nqps = %s\nburst = %s\nblock_for = "0s"\n\n' "$maxqps" "$maxqps"
    else
      printf '[ratelimit]\nenabled = false\n\n'
    fi
    if ((legacy)); then
      [[ $ca != proxy ]] || die "a legacy dnsteer binary cannot use client_address = proxy"
      printf '[upstream]\nservers = ["127.0.0.1:%s"]\nadd_ecs = %s\n\n' "${PORT[$backend]}" \
        "$([[ $ca == ecs ]] && echo true || echo false)"
    else
      printf '[upstream]\nservers = ["127.0.0.1:%s"]\nclient_address = "%s"\n\n' "${PORT[$backend]}" "$ca"
    fi
    if [[ $CACHE == 1 ]] && ! ((legacy)); then
      printf '[cache]\nenabled = true\nmax_entries = 100000\nmax_ttl = "60s"\n\n'
    fi
    printf '[probes]\ninterval = "2s"\ntimeout = "1s"\n'
    if [[ $records == 1 ]]; then
      printf '\n[geoip]\ndatabase = "%s/geoip/test-city.mmdb"\n' "$ROOT"
      printf '\n[[records]]\nname = "geo.demo.test."\ntype = "A"\nttl = 300\nlua = "%s"\n' ";$GEO_LUA"
      # The reverse zone's wildcard comes from PowerDNS by zone transfer (a wildcard is
      # answered in-process only in a transferred zone, where dnsteer knows every name).
      printf '\n[zones]\ntransfer = ["2.0.192.in-addr.arpa."]\n'
      # The same bodies as the PowerDNS zone (config/demo/demo.test.zone).
      cat <<EOF

[[records]]
name = "static.demo.test."
type = "A"
ttl = 300
content = ["192.0.2.10", "192.0.2.11"]

[[records]]
name = "all.demo.test."
type = "A"
ttl = 300
lua = "all({'192.0.2.1','192.0.2.2','192.0.2.3'})"

[[records]]
name = "whashed.demo.test."
type = "A"
ttl = 300
lua = "pickwhashed({{10,'192.0.2.1'},{20,'192.0.2.2'},{30,'192.0.2.3'}})"

[[records]]
name = "port.demo.test."
type = "A"
ttl = 30
lua = "ifportup($TCP_PORT, {'127.0.0.3','127.0.0.1'})"
EOF
    fi
  } >"$cfg"
  start_bg "$name" "$dir/dnsteer.log" "$bin" --config "$cfg"
  PORT[$name]=$port PID[$name]=$LAST_PID MPORT[$name]=$mport
  [[ $records == 1 ]] || BACKEND[$name]=${PID[$backend]} PDNS_DIR[$name]=${PDNS_DIR[$backend]}
  wait_http "http://127.0.0.1:$mport/readyz" "$LAST_PID" 30 || { tail_log "$dir/dnsteer.log"; die "$name not ready"; }
  SERVERS+=("$name")
}

start_gdnsd() {  # static A + multifo over a tcp_connect check on the same addresses
  local dir="$RUN_DIR/gdnsd" port
  mkdir -p "$dir/zones" "$dir/run" "$dir/state"
  port=$(free_port)
  cat >"$dir/config" <<EOF
options => {
  listen => [ 127.0.0.1:$port ]
  udp_threads => 2
  tcp_threads => 1
  run_dir => $dir/run
  state_dir => $dir/state
}
service_types => {
  tcpport => { plugin => tcp_connect, port => $TCP_PORT, interval => 2, timeout => 1 }
}
plugins => {
  multifo => {
    portres => { service_types => tcpport, addrs_v4 => [ 127.0.0.3, 127.0.0.1 ] }
  }
}
EOF
  cat >"$dir/zones/demo.test" <<'EOF'
$TTL 300
@      SOA ns1 hostmaster 1 3600 600 86400 300
@      NS  ns1
ns1    A   127.0.0.1
static A   192.0.2.10
static A   192.0.2.11
port   30  DYNA multifo!portres
EOF
  start_bg gdnsd "$dir/gdnsd.log" gdnsd -c "$dir" start
  PORT[gdnsd]=$port PID[gdnsd]=$LAST_PID
  wait_dns "$port" demo.test SOA "$LAST_PID" 20 || { tail_log "$dir/gdnsd.log"; die "gdnsd did not start"; }
  SERVERS+=(gdnsd)
}

# ---- query sets ---------------------------------------------------------------------------
write_queries() {
  local q="$RUN_DIR/queries"
  mkdir -p "$q"
  # Forwarded mix from the demo zone: positive answers of several types, a CNAME, NXDOMAIN
  # (no LUA names: those would measure PowerDNS's Lua, not the proxies).
  {
    for _ in 1 2 3; do
      printf '%s\n' "www.demo.test A" "www.demo.test AAAA" "mail.demo.test A" "static.demo.test A"
    done
    printf '%s\n' "demo.test SOA" "demo.test MX" "demo.test NS" "demo.test TXT" \
      "mail.demo.test AAAA" "static.demo.test AAAA" "alias.demo.test A" "ns1.demo.test A"
    for i in 1 2 3 4; do printf 'nx%s.demo.test A\n' "$i"; done
  } >"$q/forward"
  echo "static.demo.test A" >"$q/static"
  echo "port.demo.test A" >"$q/health"
  printf '%s\n' "all.demo.test A" "whashed.demo.test A" >"$q/lua"
  echo "geo.demo.test A" >"$q/geo"
  for i in $(seq 1 254); do printf '%s.2.0.192.in-addr.arpa PTR\n' "$i"; done >"$q/reverse"
}

# servers_for SET: which servers can answer a set.
servers_for() {
  local s
  for s in "${SERVERS[@]}"; do
    [[ $1 != static && $1 != health && $s == gdnsd ]] && continue
    [[ -z ${ONLY:-} || " $ONLY " == *" $s "* ]] || continue
    printf '%s\n' "$s"
  done
}

# pdns_pc DIR: "HITS MISSES" of the PowerDNS packet cache whose control socket is in DIR
pdns_pc() {
  local h m
  h=$(pdns_control --socket-dir="$1" show packetcache-hit 2>/dev/null) || h=0
  m=$(pdns_control --socket-dir="$1" show packetcache-miss 2>/dev/null) || m=0
  echo "${h:-0} ${m:-0}"
}

# ---- one measurement ----------------------------------------------------------------------
run_one() {  # run_one SET SERVER RUN SECONDS RECORD(0|1)
  local set="$1" s="$2" run="$3" secs="$4" record="$5" out t0 t1 b0=0 b1=0 pid backend
  pid=${PID[$s]} backend=${BACKEND[$s]:-}
  ((SECONDS + secs + 30 <= DEADLINE)) || die "MAX_SECONDS=$MAX_SECONDS would be exceeded: stopping"

  out="$RUN_DIR/dnsperf-$set-$s-$run.txt"
  local load1 st0 st1 tfile="$RUN_DIR/time-$set-$s-$run.txt"
  load1=$(cut -d' ' -f1 /proc/loadavg)
  st0=$(awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6 }' /proc/stat)
  local pdir=${PDNS_DIR[$s]:-} pc0="0 0" pc1="0 0"
  [[ -n $pdir ]] && pc0=$(pdns_pc "$pdir")
  t0=$(cpu_ticks "$pid")
  [[ -n $backend ]] && b0=$(cpu_ticks "$backend")
  local rate=() i rc=0
  if ((SOURCES == 1)); then
    [[ -n $RATE ]] && rate=(-Q "$RATE" -v)
    { time timeout $((secs + 30)) dnsperf -s 127.0.0.1 -p "${PORT[$s]}" -d "$RUN_DIR/queries/$set" \
      -l "$secs" -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" -t 2 "${rate[@]}" >"$out" 2>&1; } 2>"$tfile" || rc=$?
  else
    # one dnsperf per source address 127.0.i.1 (a /24 each), all at once; outputs concatenated
    local c=$(((CLIENTS + SOURCES - 1) / SOURCES)) q=$((OUTSTANDING / SOURCES))
    ((q >= 1)) || q=1
    [[ -n $RATE ]] && rate=(-Q "$(((RATE + SOURCES - 1) / SOURCES))" -v)
    { time (
      pids=()
      for ((i = 1; i <= SOURCES; i++)); do
        timeout $((secs + 30)) dnsperf -a "127.0.$i.1" -s 127.0.0.1 -p "${PORT[$s]}" -d "$RUN_DIR/queries/$set" \
          -l "$secs" -c "$c" -T 1 -q "$q" -t 2 "${rate[@]}" >"$out.$i" 2>&1 &
        pids+=($!)
      done
      r=0
      for p in "${pids[@]}"; do wait "$p" || r=1; done
      exit $r
    ); } 2>"$tfile" || rc=$?
    for ((i = 1; i <= SOURCES; i++)); do cat "$out.$i"; done >"$out"
    rm -f "$out".*
  fi
  ((rc == 0)) || { tail_log "$out"; die "dnsperf failed against $s"; }
  t1=$(cpu_ticks "$pid")
  [[ -n $backend ]] && b1=$(cpu_ticks "$backend")
  st1=$(awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6 }' /proc/stat)
  [[ -n $pdir ]] && pc1=$(pdns_pc "$pdir")
  alive "$pid" || die "$s died during the run"
  ((record)) || return 0
  # bash `time` (TIMEFORMAT '%U %S'): user and system seconds of dnsperf (all its processes)
  local client_s busy pchit
  # PowerDNS packet-cache hit rate over the run (the PowerDNS this server is or forwards to)
  pchit=$(awk -v a="$pc0" -v b="$pc1" 'BEGIN { split(a, x, " "); split(b, y, " ");
    h = y[1] - x[1]; m = y[2] - x[2]; if (h + m > 0) printf "%.2f", 100 * h / (h + m); else printf "-" }')
  client_s=$(awk 'NF == 2 { print $1 + $2 }' "$tfile" | tail -n1)
  busy=$(awk -v a="$st0" -v b="$st1" 'BEGIN { split(a, x, " "); split(b, y, " ");
    tot = y[1] - x[1]; idle = y[2] - x[2]; printf "%.0f", (tot > 0 ? 100 * (tot - idle) / tot : 0) }')
  local pct="-\t-\t-"
  if [[ -n $RATE ]]; then
    # `-v` prints "> RCODE NAME TYPE SECONDS" per answer: percentiles of the last field.
    pct=$(awk '/^> / { print $NF * 1000 }' "$out" | sort -n | awk '
      { v[NR] = $1 }
      END {
        if (NR == 0) { printf "-\t-\t-"; exit }
        split("0.5 0.99 0.999", q, " ")
        for (i = 1; i <= 3; i++) {
          k = int(q[i] * NR + 0.999999); if (k < 1) k = 1; if (k > NR) k = NR
          printf "%s%.3f", (i > 1 ? "\t" : ""), v[k]
        }
      }')
  fi
  # Summed over the dnsperf processes (one with SOURCES=1): queries, QPS; latency weighted.
  awk -v set="$set" -v s="$s" -v run="$run" -v d="$((t1 - t0))" -v bd="$((b1 - b0))" \
    -v tck="$TCK" -v has_backend="${backend:+1}" -v pct="$pct" -v cs="$client_s" -v busy="$busy" -v load1="$load1" -v pchit="$pchit" '
    /Queries sent:/      { sent += $3 }
    /Queries completed:/ { done += $3; lastdone = $3 }
    /Queries lost:/      { lostn += $3 }
    /Queries per second:/ { qps += $4 }
    /Average Latency \(s\):/ { latsum += $4 * 1000 * lastdone }
    END {
      if (done == 0) { print "no queries completed for " s > "/dev/stderr"; exit 1 }
      cpu = d / tck * 1e6 / done
      bcpu = has_backend ? sprintf("%.3f", bd / tck * 1e6 / done) : "-"
      lost = sent > 0 ? 100 * lostn / sent : 0
      printf "%s\t%s\t%s\t%.0f\t%.3f\t%.2f\t%.3f\t%s\t%s\t%.3f\t%s\t%s\t%s\n", set, s, run, qps, latsum / done, lost, cpu, bcpu, pct,
        cs * 1e6 / done, busy, load1, pchit
    }' "$out" >>"$RESULTS"
  tail -n1 "$RESULTS" | awk -F'\t' '{ printf "  %-8s %-13s run %s: %8s qps  %7s ms  lost %5s%%  cpu %7s us/q  backend %s us/q  dnsperf %s us/q  busy %s%%  load %s  pdns-pc-hit %s%%", $1, $2, $3, $4, $5, $6, $7, $8, $12, $13, $14, $15; if ($9 != "-") printf "  p50/p99/p99.9 %s/%s/%s ms", $9, $10, $11; printf "\n" }' >&2
}

# ---- main ---------------------------------------------------------------------------------
if [[ $MODE == forward ]]; then
  start_pdns pdns yes
  if [[ $CLIENT_ADDRESS == proxy || $ALSO_PROXY == 1 ]]; then
    start_pdns pdns-pp yes "proxy-protocol-from=127.0.0.0/8"
  fi
  start_dnsdist dnsdist ""
  start_dnsteer dnsteer 0 ""
  [[ -z ${DNSTEER_BIN_B:-} ]] ||
    start_dnsteer dnsteer-b 0 "" "$DNSTEER_BIN_B" "$CLIENT_ADDRESS" "${DNSTEER_B_LEGACY:-0}"
  [[ $ALSO_PROXY != 1 || $CLIENT_ADDRESS == proxy ]] || start_dnsteer dnsteer-proxy 0 "" "$BIN" proxy
  if [[ -n $MAXQPS ]]; then
    start_dnsdist dnsdist-rl "$MAXQPS"
    start_dnsteer dnsteer-rl 0 "$MAXQPS"
  fi
  [[ -z $RRL ]] || start_dnsteer dnsteer-rrl 0 "rrl:$RRL"
  sets=(forward)
else
  start_pdns pdns yes
  start_pdns pdns-shared shared
  start_gdnsd
  start_dnsteer dnsteer 1 ""
  [[ -z $RRL ]] || start_dnsteer dnsteer-rrl 1 "rrl:$RRL"
  [[ -z ${DNSTEER_BIN_B:-} ]] || start_dnsteer dnsteer-b 1 "" "$DNSTEER_BIN_B" "$CLIENT_ADDRESS" "${DNSTEER_B_LEGACY:-0}"
  read -r -a sets <<<"$SETS"
fi
write_queries
for set in "${sets[@]}"; do
  [[ -f $RUN_DIR/queries/$set ]] || die "unknown query set $set"
done

log "servers: $(for s in "${SERVERS[@]}"; do printf '%s=127.0.0.1:%s ' "$s" "${PORT[$s]}"; done)"
total=$(( (WARMUP + DURATION * RUNS) * $(for set in "${sets[@]}"; do servers_for "$set"; done | wc -l) ))
log "mode $MODE, sets: ${sets[*]}; about ${total} s of load"
((SECONDS + total <= DEADLINE)) || die "about ${total} s of load exceeds MAX_SECONDS=$MAX_SECONDS"

if ((WARMUP > 0)); then
  log "warm-up ${WARMUP} s each (LUA health checks start on first use in PowerDNS)"
  for set in "${sets[@]}"; do
    for s in $(servers_for "$set"); do run_one "$set" "$s" 0 "$WARMUP" 0; done
  done
fi
for run in $(seq 1 "$RUNS"); do
  log "round $run/$RUNS"
  for set in "${sets[@]}"; do
    for s in $(servers_for "$set"); do run_one "$set" "$s" "$run" "$DURATION" 1; done
  done
done

mkdir -p "$TARGET_DIR/bench"
keep="$TARGET_DIR/bench/dnsperf-$MODE-$(date +%Y%m%d-%H%M%S).tsv"
cp "$RESULTS" "$keep"
# dnsteer's cache, upstream-error and drop counters over the whole run (warm-up included), kept
# as target/bench/...-SERVER-counters.prom; the cache hit rate and upstream errors are printed
for s in "${SERVERS[@]}"; do
  [[ -n ${MPORT[$s]:-} ]] || continue
  curl -fsS --max-time 2 "http://127.0.0.1:${MPORT[$s]}/metrics" >"$RUN_DIR/metrics-$s.txt" 2>/dev/null || continue
  grep -E '^dnsteer_(cache_|upstream_errors_total|upstream_requests_total|dropped_total)' "$RUN_DIR/metrics-$s.txt" >"${keep%.tsv}-$s-counters.prom" || true
  awk -v s="$s" '/^dnsteer_cache_hits_total / { h = $2 } /^dnsteer_cache_misses_total / { m = $2 }
    END { if (h + m > 0) printf "%s cache: %d hits, %d misses, hit rate %.4f%%\n", s, h, m, 100 * h / (h + m) }' \
    "$RUN_DIR/metrics-$s.txt" >&2
  awk -v s="$s" '/^dnsteer_upstream_errors_total/ { e += $2 } /^dnsteer_upstream_requests_total/ { r += $2 }
    END { if (r > 0) printf "%s upstream: %d requests, %d errors (timeouts, refused, ...)\n", s, r, e }' \
    "$RUN_DIR/metrics-$s.txt" >&2
done

python3 - "$RESULTS" "$MODE" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
mode = sys.argv[2]
for r in rows:  # server + its PowerDNS (PowerDNS direct: itself)
    b = r["backend_cpu_us_per_q"]
    r["cpu_total"] = float(r["cpu_us_per_q"]) + (float(b) if b not in ("-", "") else 0.0)
def med(vals):
    vals = [float(v) for v in vals if v not in ("-", "")]
    return statistics.median(vals) if vals else None
table = {}
for r in rows:
    table.setdefault((r["set"], r["server"]), []).append(r)
print()
print(f"Medians ({mode} mode; CPU = server process time per completed query)")
print(f"{'set':<8} {'server':<13} {'qps':>10} {'lat ms':>8} {'lost %':>7} {'cpu us/q':>9} {'+pdns us/q':>11} {'dnsperf us/q':>12} {'busy %':>6} {'load1':>5} {'pdns pc hit %':>13}")
stats = {}
for (st, sv), rs in table.items():
    m = {k: med([r.get(k, "-") for r in rs]) for k in ("qps", "latency_ms", "lost_pct", "cpu_us_per_q", "backend_cpu_us_per_q", "p50_ms", "p99_ms", "p999_ms", "client_us_q", "busy_pct", "load1", "pdns_pc_hit_pct")}
    stats[(st, sv)] = m
    b = m["backend_cpu_us_per_q"]
    pct = "" if m["p50_ms"] is None else f"   p50/p99/p99.9 ms {m['p50_ms']:.3f}/{m['p99_ms']:.3f}/{m['p999_ms']:.3f}"
    print(f"{st:<8} {sv:<13} {m['qps']:>10.0f} {m['latency_ms']:>8.3f} {m['lost_pct']:>7.2f} "
          f"{m['cpu_us_per_q']:>9.2f} {('%.2f' % b) if b is not None else '-':>11} {m['client_us_q']:>12.2f} "
          f"{m['busy_pct']:>6.0f} {m['load1']:>5.2f} {('%.2f' % m['pdns_pc_hit_pct']) if m['pdns_pc_hit_pct'] is not None else '-':>13}   total {med([r['cpu_total'] for r in rs]):.2f} us/q{pct}")
print()
print("Ratios A/B: median over rounds of the ratio within one round (A and B measured back to")
print("back in the same round); qps higher is better for A, cpu/query lower is better for A")
by_run = {(r["set"], r["server"], r["run"]): r for r in rows}
def ratio(st, a, b, key):
    vals = []
    for (s1, sv, run), r in by_run.items():
        o = by_run.get((st, b, run))
        if s1 == st and sv == a and o and float(o[key]) > 0:
            vals.append(float(r[key]) / float(o[key]))
    return statistics.median(vals) if vals else float("nan"), len(vals)
names = sorted({sv for (_, sv) in stats})
pairs = [(a, b) for a in names if a.startswith("dnsteer") for b in names if b != a]
pairs += [("dnsdist-rl", "dnsdist")] if "dnsdist-rl" in names else []
for st in sorted({st for (st, _) in stats}):
    for a, b in pairs:
        if (st, a) not in stats or (st, b) not in stats:
            continue
        q, n = ratio(st, a, b, "qps")
        c, _ = ratio(st, a, b, "cpu_us_per_q")
        t, _ = ratio(st, a, b, "cpu_total")
        print(f"  {st:<8} {a}/{b:<12} qps x{q:.2f}   cpu/query x{c:.2f}   +pdns cpu/query x{t:.2f}   ({n} rounds)")
PY
log "raw results: $keep"
