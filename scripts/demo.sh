#!/usr/bin/env bash
# dnsteer demo: PowerDNS + probe targets + dnsteer on loopback, then dig at it.
#
#   scripts/demo.sh                    # runs until Ctrl-C / SIGTERM
#   DEMO_SECONDS=5 scripts/demo.sh     # self-check, serve 5 s, exit (CI smoke test)
#
# What runs (all on 127.0.0.1, fixed demo ports; the script refuses to start if one is taken):
#   dnsteer        :5300 UDP+TCP  config/demo/dnsteer.toml; metrics/health on :9153
#   PowerDNS 4.7   :5353 UDP+TCP  zone demo.test. (config/demo/demo.test.zone), bind backend
#   HTTP target    :8053          python3 http.server, probed by ifurlup (url.demo.test)
#   TCP target     :8054          accept-and-close listener, probed by ifportup (port.demo.test)
# 127.0.0.2/127.0.0.3 have no listener, so those candidates probe DOWN.
# geoip: config/demo/dnsteer.toml points at <repo>/geoip/test-city.mmdb.
#
# Env: DEMO_SECONDS=N (exit after N s), DEMO_PROFILE=release|debug (default release),
#      DNSTEER_BIN=path (skip the build), SKIP_DEPS=1 (skip scripts/install-deps.sh),
#      KEEP_RUN_DIR=1 (keep logs). Exit status: 0, or 1 if start-up or the self-check failed.
# On exit it kills exactly the processes it started.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DNS_PORT=5300 METRICS_PORT=9153 PDNS_PORT=5353 HTTP_PORT=8053 TCP_PORT=8054
CONFIG="$ROOT/config/demo/dnsteer.toml"
PROFILE="${DEMO_PROFILE:-release}"
DEMO_SECONDS="${DEMO_SECONDS:-}"
[[ -z $DEMO_SECONDS || $DEMO_SECONDS =~ ^[0-9]+$ ]] || die "DEMO_SECONDS must be a whole number of seconds"

cd "$ROOT"
[[ ${SKIP_DEPS:-0} == 1 ]] || bash "$ROOT/scripts/install-deps.sh"

if [[ -n ${DNSTEER_BIN:-} ]]; then
  BIN="$DNSTEER_BIN"
else
  if [[ $PROFILE == release ]]; then
    log "building dnsteer (cargo build --release)"
    cargo build --release --bin dnsteer
  else
    log "building dnsteer (cargo build)"
    cargo build --bin dnsteer
  fi
  BIN="$TARGET_DIR/$PROFILE/dnsteer"
fi
[[ -x $BIN ]] || die "no dnsteer binary at $BIN"

ports_free "udp:$DNS_PORT" "tcp:$DNS_PORT" "tcp:$METRICS_PORT" "udp:$PDNS_PORT" "tcp:$PDNS_PORT" \
  "tcp:$HTTP_PORT" "tcp:$TCP_PORT" || die "a demo port is busy (is another demo running?)"

make_run_dir dnsteer-demo
INTERRUPT_RC=0   # Ctrl-C / SIGTERM is how the demo normally ends
install_cleanup
log "run dir $RUN_DIR"

# ---- probe targets ------------------------------------------------------------------------
mkdir -p "$RUN_DIR/www"
echo ok >"$RUN_DIR/www/index.html"
start_bg http-target "$RUN_DIR/http.log" \
  python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$RUN_DIR/www"
HTTP_PID=$LAST_PID
start_bg tcp-target "$RUN_DIR/tcp.log" python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
while True:
    c, _ = s.accept()
    c.close()
' "$TCP_PORT"
TCP_PID=$LAST_PID

# ---- PowerDNS -----------------------------------------------------------------------------
render_pdns_conf "$RUN_DIR" "$PDNS_PORT"
start_bg pdns_server "$RUN_DIR/pdns.log" "$(pdns_server_bin)" --config-dir="$RUN_DIR"
PDNS_PID=$LAST_PID
wait_dns "$PDNS_PORT" demo.test SOA "$PDNS_PID" 20 || { tail_log "$RUN_DIR/pdns.log"; die "PowerDNS did not come up on :$PDNS_PORT"; }
wait_http "http://127.0.0.1:$HTTP_PORT/" "$HTTP_PID" 10 || { tail_log "$RUN_DIR/http.log"; die "HTTP target did not come up"; }
alive "$TCP_PID" || { tail_log "$RUN_DIR/tcp.log"; die "TCP target died"; }

# ---- dnsteer ------------------------------------------------------------------------------
start_bg dnsteer "$RUN_DIR/dnsteer.log" "$BIN" --config "$CONFIG"
DNSTEER_PID=$LAST_PID
if ! wait_http "http://127.0.0.1:$METRICS_PORT/readyz" "$DNSTEER_PID" 30; then
  tail_log "$RUN_DIR/dnsteer.log"
  alive "$DNSTEER_PID" || die "dnsteer exited during start-up (log above)"
  die "dnsteer not ready (/readyz) within 30 s"
fi
log "dnsteer ready"

# ---- self-check ---------------------------------------------------------------------------
failures=0
# ask LABEL PORT EXPECTED DIG-ARGS...: show the answer; EXPECTED (space-separated, sorted) or "-"
# (show only). Compares the sorted +short output.
ask() {
  local label="$1" port="$2" want="$3" got
  shift 3
  got=$(dig +norec +time=2 +tries=1 +short @127.0.0.1 -p "$port" "$@" 2>&1 | sort | paste -sd' ' -) || true
  if [[ $want == - ]]; then
    printf '  %-44s %s\n' "$label" "${got:-<empty>}"
  elif [[ $got == "$want" ]]; then
    printf '  ok   %-39s %s\n' "$label" "$got"
  else
    printf '  FAIL %-39s got [%s] want [%s]\n' "$label" "$got" "$want"
    failures=$((failures + 1))
  fi
}
# flags LABEL PORT WANT-FLAG DIG-ARGS...: check a header flag (e.g. tc) is set.
flags() {
  local label="$1" port="$2" flag="$3" got
  shift 3
  got=$(dig +norec +time=2 +tries=1 @127.0.0.1 -p "$port" "$@" 2>&1 | sed -n 's/^;; flags: \([a-z ]*\);.*/\1/p') || true
  if [[ " $got " == *" $flag "* ]]; then
    printf '  ok   %-39s flags: %s\n' "$label" "$got"
  else
    printf '  FAIL %-39s flags: [%s], want %s\n' "$label" "$got" "$flag"
    failures=$((failures + 1))
  fi
}

echo
echo "Self-check against dnsteer on 127.0.0.1:$DNS_PORT (PowerDNS on :$PDNS_PORT):"
echo " forwarded to PowerDNS"
ask "www.demo.test A" $DNS_PORT "192.0.2.80" www.demo.test A
ask "alias.demo.test A (CNAME)" $DNS_PORT "192.0.2.80 www.demo.test." alias.demo.test A
ask "demo.test MX" $DNS_PORT "10 mail.demo.test." demo.test MX
ask "pdns-cname.demo.test A (PowerDNS LUA)" $DNS_PORT "192.0.2.80 www.demo.test." pdns-cname.demo.test A
ask "pdns-who.demo.test TXT (ECS added)" $DNS_PORT '"pdns saw bestwho=127.0.0.0"' pdns-who.demo.test TXT
flags "big.demo.test TXT +noedns over UDP" $DNS_PORT tc +ignore +noedns big.demo.test TXT
big=$(dig +norec +time=2 +tries=1 +short +tcp @127.0.0.1 -p $DNS_PORT big.demo.test TXT 2>/dev/null | wc -c) || true
if ((big > 600)); then
  printf '  ok   %-39s %s bytes of TXT\n' "big.demo.test TXT +tcp" "$big"
else
  printf '  FAIL %-39s %s bytes of TXT, want > 600\n' "big.demo.test TXT +tcp" "$big"; failures=$((failures + 1))
fi
echo " answered in-process"
ask "static.demo.test A" $DNS_PORT "192.0.2.10 192.0.2.11" static.demo.test A
ask "static.demo.test AAAA" $DNS_PORT "2001:db8::10" static.demo.test AAAA
ask "all.demo.test A" $DNS_PORT "192.0.2.1 192.0.2.2 192.0.2.3" all.demo.test A
ask "port.demo.test A (ifportup)" $DNS_PORT "127.0.0.1" port.demo.test A
ask "url.demo.test A (ifurlup)" $DNS_PORT "127.0.0.1" url.demo.test A
ask "url.demo.test A +tcp" $DNS_PORT "127.0.0.1" +tcp url.demo.test A
for net in 198.51.100.0/24 203.0.113.0/24 10.20.30.0/24; do
  pdns_says=$(dig +norec +time=2 +tries=1 +short @127.0.0.1 -p $PDNS_PORT +subnet=$net whashed.demo.test A 2>&1) || true
  ask "whashed +subnet=$net (= PowerDNS)" $DNS_PORT "$pdns_says" +subnet=$net whashed.demo.test A
done
for net in 80.81.82.0/24 45.33.32.0/24 139.130.4.0/24; do
  ask "closest +subnet=$net" $DNS_PORT - +subnet=$net closest.demo.test A
done
ask "geo +subnet=193.0.6.0/24 (EU)" $DNS_PORT "192.0.2.32" +subnet=193.0.6.0/24 geo.demo.test A
ask "geo +subnet=8.8.8.0/24 (US)" $DNS_PORT "192.0.2.31" +subnet=8.8.8.0/24 geo.demo.test A
ask "geo +subnet=203.0.113.0/24 (unknown)" $DNS_PORT "192.0.2.33" +subnet=203.0.113.0/24 geo.demo.test A
echo " health"
for path in healthz readyz; do
  if curl -fsS --max-time 2 "http://127.0.0.1:$METRICS_PORT/$path" >/dev/null; then
    printf '  ok   %-39s\n' "GET /$path"
  else
    printf '  FAIL %-39s\n' "GET /$path"; failures=$((failures + 1))
  fi
done
# Fetch first: `curl | grep -q` fails under pipefail when grep exits before curl has written
# the whole (large) body.
metrics_body=$(curl -fsS --max-time 2 "http://127.0.0.1:$METRICS_PORT/metrics" || true)
if grep -q '^dnsteer_' <<<"$metrics_body"; then
  printf '  ok   %-39s\n' "GET /metrics has dnsteer_* series"
else
  printf '  FAIL %-39s\n' "GET /metrics has dnsteer_* series"; failures=$((failures + 1))
fi

cat <<EOF

Try (dnsteer on :$DNS_PORT, PowerDNS direct on :$PDNS_PORT):
  dig @127.0.0.1 -p $DNS_PORT www.demo.test A                      # forwarded to PowerDNS
  dig @127.0.0.1 -p $DNS_PORT static.demo.test A                   # in-process static set
  dig @127.0.0.1 -p $DNS_PORT url.demo.test A                      # ifurlup, first UP group
  dig @127.0.0.1 -p $DNS_PORT port.demo.test A                     # ifportup
  dig @127.0.0.1 -p $DNS_PORT +subnet=198.51.100.0/24 whashed.demo.test A   # compare with -p $PDNS_PORT
  dig @127.0.0.1 -p $DNS_PORT +subnet=80.81.82.0/24 closest.demo.test A     # pickclosest (GeoIP)
  dig @127.0.0.1 -p $DNS_PORT +subnet=8.8.8.0/24 geo.demo.test A              # if continent()/country() (GeoIP)
  dig @127.0.0.1 -p $DNS_PORT pdns-who.demo.test TXT               # PowerDNS LUA sees dnsteer's ECS
  dig @127.0.0.1 -p $DNS_PORT +tcp big.demo.test TXT               # >512 bytes over TCP
  dig @127.0.0.1 -p $DNS_PORT +ignore +noedns big.demo.test TXT    # TC=1 over UDP
  curl -s 127.0.0.1:$METRICS_PORT/status ; curl -s 127.0.0.1:$METRICS_PORT/metrics | grep ^dnsteer_
Failover: kill $HTTP_PID (the HTTP target); within a probe interval url.demo.test has no UP
candidate and answers by the backup rule (one of all candidates, as PowerDNS does).
Logs: $RUN_DIR (dnsteer.log, pdns.log). Processes: dnsteer $DNSTEER_PID, pdns $PDNS_PID,
http $HTTP_PID, tcp $TCP_PID.
EOF

if ((failures)); then
  log "self-check: $failures failed"
  [[ -n $DEMO_SECONDS ]] && exit 1
else
  log "self-check passed"
fi

# ---- serve --------------------------------------------------------------------------------
if [[ -n $DEMO_SECONDS ]]; then
  log "serving for $DEMO_SECONDS s (DEMO_SECONDS)"
  end=$((SECONDS + DEMO_SECONDS))
else
  log "serving; Ctrl-C to stop"
  end=-1
fi
while ((end < 0 || SECONDS < end)); do
  alive "$DNSTEER_PID" || { tail_log "$RUN_DIR/dnsteer.log"; die "dnsteer exited"; }
  alive "$PDNS_PID" || { tail_log "$RUN_DIR/pdns.log"; die "pdns_server exited"; }
  sleep 1
done
log "done"
