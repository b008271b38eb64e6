#!/usr/bin/env bash
# Validate deploy/ without a cluster:
#  1. every manifest against the Kubernetes OpenAPI schemas (kubernetes-validate from PyPI, in a
#     venv under target/; it ships the schemas, so validation itself is offline), strict mode:
#     unknown fields are errors;
#  2. kustomization.yaml lists existing files, and every manifest except the dnsperf Job (the
#     same for deploy/monitoring/); the Deployment's config mount, args, PriorityClass and
#     topology spread;
#  2b. deploy/monitoring/ (Prometheus Operator CRDs, which the validator has no schemas for):
#     structure against the CRD fields used (scripts/check-monitoring.py), the ServiceMonitor
#     finds its Service and port, every metric an alert uses is in README's metrics table, and
#     `promtool check rules` on the rule groups and `promtool test rules` on
#     deploy/monitoring/tests/ when promtool is installed (Debian package: prometheus);
#  3. the dnsteer.toml inside the ConfigMap passes `dnsteer check-config` (and so does
#     config/demo/dnsteer.toml);
#  4. the example PowerDNS ConfigMap really serves its zone: its pdns.conf/named.conf/zone are
#     started on a loopback port with pdns_server and asked for the zone's SOA;
#  5. the Dockerfile and the Containerfile have the expected stages, user and entrypoint.
#
#   scripts/check-deploy.sh            # exit 0 when everything holds
# Env: K8S_VERSION (schema version, default: the validator's newest), DNSTEER_BIN (skip build).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

VALIDATOR_VERSION=1.37.0
VENV="$TARGET_DIR/deploy-venv"
failures=0
fail() { log "FAIL: $*"; failures=$((failures + 1)); }

# ---- 1. schema validation -----------------------------------------------------------------
if [[ ! -x $VENV/bin/kubernetes-validate ]] ||
  [[ $("$VENV/bin/kubernetes-validate" --version 2>/dev/null) != "$VALIDATOR_VERSION" ]]; then
  log "installing kubernetes-validate $VALIDATOR_VERSION into $VENV"
  rm -rf "$VENV"
  # The system python3 (not a pyenv shim): Debian's python3-venv is what install-deps.sh provides.
  py=/usr/bin/python3
  [[ -x $py ]] || py=python3
  "$py" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VALIDATOR_VERSION"
fi
manifests=()
for f in deploy/*.yaml; do
  [[ $(basename "$f") == kustomization.yaml ]] || manifests+=("$f")
done
kv_args=(--strict)
[[ -n ${K8S_VERSION:-} ]] && kv_args+=(-k "$K8S_VERSION")
log "validating ${#manifests[@]} manifests"
if ! "$VENV/bin/kubernetes-validate" "${kv_args[@]}" "${manifests[@]}"; then
  fail "schema validation"
fi

# ---- 2. kustomization, and pull out the embedded files ------------------------------------
make_run_dir dnsteer-check-deploy
install_cleanup
if ! "$VENV/bin/python" - "$RUN_DIR" deploy <<'PY'; then
import os, sys, yaml
out, deploy = sys.argv[1], sys.argv[2]
errors = []
kust = yaml.safe_load(open(os.path.join(deploy, "kustomization.yaml")))
listed = kust.get("resources", [])
for r in listed:
    if not os.path.isfile(os.path.join(deploy, r)):
        errors.append(f"kustomization lists missing file {r}")
for f in sorted(os.listdir(deploy)):
    if f.endswith(".yaml") and f not in ("kustomization.yaml", "dnsperf-job.yaml") and f not in listed:
        errors.append(f"{f} is not listed in kustomization.yaml")
mon = os.path.join(deploy, "monitoring")
mon_listed = yaml.safe_load(open(os.path.join(mon, "kustomization.yaml"))).get("resources", [])
for r in mon_listed:
    if not os.path.isfile(os.path.join(mon, r)):
        errors.append(f"monitoring/kustomization.yaml lists missing file {r}")
for f in sorted(os.listdir(mon)):
    if f.endswith(".yaml") and f != "kustomization.yaml" and f not in mon_listed:
        errors.append(f"monitoring/{f} is not listed in monitoring/kustomization.yaml")

def configmap(name):
    for f in sorted(os.listdir(deploy)):
        if not f.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(open(os.path.join(deploy, f))):
            if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == name:
                return doc["data"]
    errors.append(f"no ConfigMap {name}")
    return {}

data = configmap("dnsteer-config")
if "dnsteer.toml" in data:
    open(os.path.join(out, "dnsteer.toml"), "w").write(data["dnsteer.toml"])
else:
    errors.append("ConfigMap dnsteer-config has no dnsteer.toml")
pdns = os.path.join(out, "pdns")
os.makedirs(pdns)
for key, text in configmap("pdns-config").items():
    open(os.path.join(pdns, key), "w").write(text)

# The Deployment must mount the config as a directory (no subPath) and pass --config into it.
for doc in yaml.safe_load_all(open(os.path.join(deploy, "dnsteer-deployment.yaml"))):
    c = doc["spec"]["template"]["spec"]["containers"][0]
    if any("subPath" in m for m in c.get("volumeMounts", [])):
        errors.append("dnsteer-deployment.yaml: config must not be mounted with subPath")
    if c.get("args") != ["--config", "/etc/dnsteer/dnsteer.toml"]:
        errors.append("dnsteer-deployment.yaml: args must be --config /etc/dnsteer/dnsteer.toml")
    pod = doc["spec"]["template"]["spec"]
    pod_labels = doc["spec"]["template"]["metadata"]["labels"]
    pcs = [d["metadata"]["name"] for f in sorted(os.listdir(deploy)) if f.endswith(".yaml")
           for d in yaml.safe_load_all(open(os.path.join(deploy, f)))
           if d and d.get("kind") == "PriorityClass"]
    if pod.get("priorityClassName") not in pcs:
        errors.append(f"dnsteer-deployment.yaml: priorityClassName {pod.get('priorityClassName')!r} "
                      f"is not a PriorityClass in deploy/ ({pcs})")
    spread = {t.get("topologyKey"): t for t in pod.get("topologySpreadConstraints", [])}
    for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
        t = spread.get(key)
        if t is None:
            errors.append(f"dnsteer-deployment.yaml: no topologySpreadConstraint on {key}")
        elif any(pod_labels.get(k) != v for k, v in t["labelSelector"]["matchLabels"].items()):
            errors.append(f"dnsteer-deployment.yaml: spread on {key} does not select the pods")
for e in errors:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
  fail "kustomization / manifest structure"
fi

# ---- 2b. Prometheus Operator objects -------------------------------------------------------
if "$VENV/bin/python" scripts/check-monitoring.py deploy README.md "$RUN_DIR"; then
  log "ok: deploy/monitoring structure, ServiceMonitor target, alert metrics in README"
else
  fail "deploy/monitoring"
fi
if command -v promtool >/dev/null 2>&1; then
  if promtool check rules "$RUN_DIR/rules.yaml" >"$RUN_DIR/promtool.out" 2>&1; then
    log "ok: promtool check rules ($(grep -o '[0-9]* rules found' "$RUN_DIR/promtool.out"))"
  else
    tail_log "$RUN_DIR/promtool.out"
    fail "promtool check rules"
  fi
  # The alerts fire on the series shapes dnsteer exports, and stay quiet where they must.
  tests=()
  for t in deploy/monitoring/tests/*.test.yaml; do
    cp "$t" "$RUN_DIR/"
    tests+=("$RUN_DIR/$(basename "$t")")
  done
  if promtool test rules "${tests[@]}" >"$RUN_DIR/promtool-test.out" 2>&1; then
    log "ok: promtool test rules (deploy/monitoring/tests)"
  else
    tail_log "$RUN_DIR/promtool-test.out" 40
    fail "promtool test rules"
  fi
elif [[ ${SKIP_DEPS:-0} == 1 ]]; then
  log "promtool not installed (apt-get install prometheus): PromQL syntax of the alerts not checked"
else
  fail "promtool not installed: scripts/install-deps.sh installs it (Debian package prometheus)"
fi

# ---- 3. dnsteer check-config --------------------------------------------------------------
if [[ -n ${DNSTEER_BIN:-} ]]; then
  BIN="$DNSTEER_BIN"
else
  log "building dnsteer (cargo build)"
  cargo build --quiet --bin dnsteer
  BIN="$TARGET_DIR/debug/dnsteer"
fi
for cfg in "$RUN_DIR/dnsteer.toml" "$ROOT/config/demo/dnsteer.toml"; do
  if out=$("$BIN" check-config "$cfg" 2>&1); then
    log "ok: dnsteer check-config ${cfg#"$RUN_DIR"/}"
  else
    printf '%s\n' "$out" | sed 's/^/    /' >&2
    fail "dnsteer check-config $cfg"
  fi
done
# A config that must be rejected, so a check-config that accepts anything is caught.
printf '[server]\nlisten = ["127.0.0.1:5300"]\nbogus_key = 1\n' >"$RUN_DIR/bad.toml"
if "$BIN" check-config "$RUN_DIR/bad.toml" >"$RUN_DIR/bad.out" 2>&1; then
  fail "dnsteer check-config accepted an unknown key"
elif ! grep -q 'bad.toml:3:' "$RUN_DIR/bad.out"; then
  tail_log "$RUN_DIR/bad.out"
  fail "dnsteer check-config did not report file:line:col for an unknown key"
fi

# ---- 4. the example PowerDNS config serves its zone ---------------------------------------
P="$RUN_DIR/pdns"
port=$(free_port)
sed -i -e "s#/etc/pdns-example#$P#g" -e "s#/etc/pdns-api#$P/api#g" "$P/pdns.conf" "$P/named.conf"
# The API key comes from a Secret in the cluster (include-dir); a stand-in here, and the
# webserver on a free loopback port.
mkdir -p "$P/api"
printf 'api-key=check-deploy\n' >"$P/api/api-key.conf"
printf 'webserver-address=127.0.0.1\nwebserver-port=%s\n' "$(free_port)" >>"$P/pdns.conf"
# Loopback and a scratch socket dir instead of the pod's addresses and emptyDir.
printf 'local-address=127.0.0.1\nlocal-port=%s\nsocket-dir=%s\n' "$port" "$P" >>"$P/pdns.conf"
zone=$(sed -n 's/^zone "\([^"]*\)".*/\1/p' "$P/named.conf" | head -n1)
start_bg pdns_server "$P/pdns.log" "$(pdns_server_bin)" --config-dir="$P"
if wait_dns "$port" "$zone" SOA "$LAST_PID" 15 &&
  dig +norec +short +time=2 +tries=1 @127.0.0.1 -p "$port" "$zone" SOA | grep -q .; then
  log "ok: example PowerDNS config serves $zone"
else
  tail_log "$P/pdns.log"
  fail "example PowerDNS config does not serve $zone"
fi
stop_all

# ---- 5. Dockerfile ------------------------------------------------------------------------
df=deploy/Dockerfile
grep -q '^FROM rust:1-bookworm AS build' "$df" || fail "Dockerfile: builder stage"
grep -Eq '^FROM (gcr.io/distroless/cc|debian:bookworm-slim)' "$df" || fail "Dockerfile: runtime stage"
grep -q '^USER 65532' "$df" || fail "Dockerfile: non-root USER"
grep -q '^ENTRYPOINT \["/usr/local/bin/dnsteer"\]' "$df" || fail "Dockerfile: ENTRYPOINT"
grep -q '^CMD \["--config", "/etc/dnsteer/dnsteer.toml"\]' "$df" || fail "Dockerfile: CMD"
# The local image (scripts/image.sh; scripts/image-test.sh runs it): nothing pulled, same user
# and entrypoint as the Dockerfile's.
cf=deploy/Containerfile
[[ $(grep '^FROM' "$cf") == "FROM scratch" ]] || fail "Containerfile: a single FROM scratch"
grep -q '^USER 65532:65532' "$cf" || fail "Containerfile: non-root USER"
grep -q '^ENTRYPOINT \["/usr/local/bin/dnsteer"\]' "$cf" || fail "Containerfile: ENTRYPOINT"
grep -q '^CMD \["--config", "/etc/dnsteer/dnsteer.toml"\]' "$cf" || fail "Containerfile: CMD"

if ((failures)); then
  log "check-deploy: $failures check(s) failed"
  exit 1
fi
log "check-deploy: all checks passed"
