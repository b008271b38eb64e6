#!/usr/bin/env bash
# Install the system packages the tests, demo and benchmarks need (Debian 12), only those missing,
# and make sure the distribution's own pdns/dnsdist/gdnsd services are not running: our scripts
# start private instances on loopback ports and must never find a system daemon there.
#
#   scripts/install-deps.sh          # idempotent; a no-op when everything is present
#
# Runs as root (or through sudo when available). Never downloads anything but Debian packages.
set -euo pipefail

PACKAGES=(
  pdns-server pdns-backend-bind pdns-backend-geoip   # PowerDNS Authoritative 4.7 (upstream of dnsteer)
  dnsperf dnsdist gdnsd                                # load generator and comparison servers
  bind9-dnsutils curl                                  # dig, HTTP checks
  python3 python3-venv                                 # demo probe targets; venv for the manifest validator
  # DNSSEC tests: a real validating resolver, and an independent signature check run with
  # Debian's /usr/bin/python3 (not a pyenv shim). pdnsutil ships in pdns-server; the bind
  # backend's bind-dnssec-db is built into pdns-backend-bind (it links libsqlite3 itself), so
  # neither pdns-backend-sqlite3 nor the sqlite3 CLI is needed.
  unbound python3-dnspython python3-cryptography
  # dnstap test: fstrm_capture is the Frame Streams collector (Debian's dnstap-ldns 0.2 reads
  # files only), dnstap-ldns decodes what it captured.
  fstrm-bin dnstap-ldns
  chromium chromium-driver                             # tests/status_page.rs: the status page in headless Chromium over WebDriver
  prometheus                                           # promtool: check-deploy checks the alert rules and runs their unit tests
)
SERVICES=(pdns dnsdist gdnsd unbound prometheus)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root (or sudo)" >&2; exit 1; }
  SUDO=(sudo)
fi

installed() {  # installed PKG: true when dpkg has it fully installed
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  # Keep maintainer scripts from starting pdns/dnsdist/gdnsd at install time (Debian's
  # policy-rc.d convention, honoured by invoke-rc.d and deb-systemd-invoke). Only a file we
  # created is removed again.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from dnsteer scripts/install-deps.sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    created_policy=1
  fi
  cleanup() { if ((created_policy)); then "${SUDO[@]}" rm -f "$policy"; fi; }
  trap cleanup EXIT
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  cleanup
  trap - EXIT
else
  echo "install-deps: all packages present"
fi

# Stop and disable the distribution services, whichever init system exists (tolerate none).
for s in "${SERVICES[@]}"; do
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    "${SUDO[@]}" systemctl disable --now "$s" >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1 && [[ -x /etc/init.d/$s ]]; then
    "${SUDO[@]}" service "$s" stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then
      "${SUDO[@]}" update-rc.d "$s" disable >/dev/null 2>&1 || true
    fi
  fi
done

for b in pdns_server pdns_control pdnsutil dnsperf dnsdist gdnsd dig curl python3 unbound unbound-control fstrm_capture dnstap-ldns chromium chromedriver; do
  command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || { echo "install-deps: $b still missing" >&2; exit 1; }
done
/usr/bin/python3 -c 'import dns.dnssec, cryptography' || { echo "install-deps: python3-dnspython/python3-cryptography not importable by /usr/bin/python3" >&2; exit 1; }
