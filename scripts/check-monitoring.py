"""Offline checks of the Prometheus Operator objects in deploy/monitoring/ (run by
scripts/check-deploy.sh with its venv's python; needs pyyaml and jsonschema).

kubernetes-validate has no schemas for CRDs, so ServiceMonitor and PrometheusRule are checked
here against the subset of the operator's monitoring.coreos.com/v1 schema they use, strictly
(an unknown or misspelt field is an error), and against the rest of the bundle:
  - the ServiceMonitor selects a Service in deploy/ whose ports include every endpoint port;
  - every alert has severity and summary/description, and every dnsteer_* metric its expression
    names is in README's metrics table (histogram _bucket/_sum/_count allowed);
  - the rule groups are written to OUT/rules.yaml for `promtool check rules`;
  - the Grafana dashboard (dnsteer-grafana-dashboard.json) parses as JSON, has a unique id
    and gridPos per panel and a datasource on every target, every dnsteer_* metric its PromQL
    names is in README's metrics table, and monitoring/kustomization.yaml generates its
    ConfigMap.

  python check-monitoring.py DEPLOY_DIR README OUT_DIR      # exit 1 listing every problem
"""
import os
import re
import sys

import jsonschema
import yaml

DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "minProperties": 1,
                        "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
    "additionalProperties": False,
}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": LABEL_SELECTOR,
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
RULE = {
    "type": "object",
    "required": ["expr"],
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "record": {"type": "string"},
        "expr": {"type": "string", "minLength": 1},
        "for": {"type": "string", "pattern": DURATION},
        "keep_firing_for": {"type": "string", "pattern": DURATION},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "additionalProperties": False,
}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string", "pattern": DURATION},
                            "rules": {"type": "array", "minItems": 1, "items": RULE},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR, "PrometheusRule": PROMETHEUS_RULE}


def docs_in(directory):
    for f in sorted(os.listdir(directory)):
        if f.endswith(".yaml") and f != "kustomization.yaml":
            for doc in yaml.safe_load_all(open(os.path.join(directory, f))):
                if doc:
                    yield f, doc


def readme_metrics(readme):
    """Metric names in README's table: rows that start with | `dnsteer_…` |."""
    return set(re.findall(r"^\| `(dnsteer_[a-z0-9_]+)` \|", open(readme).read(), re.M))


DASHBOARD = "dnsteer-grafana-dashboard.json"


def walk_exprs(node, out):
    """Every PromQL string in a dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "definition") and isinstance(v, str):
                out.append(v)
            else:
                walk_exprs(v, out)
    elif isinstance(node, list):
        for v in node:
            walk_exprs(v, out)


def check_dashboard(mon_dir, known):
    import json
    errors = []
    path = os.path.join(mon_dir, DASHBOARD)
    try:
        dash = json.load(open(path))
    except (OSError, ValueError) as e:
        return [f"monitoring/{DASHBOARD}: {e}"]
    for key in ("title", "uid", "panels", "templating"):
        if key not in dash:
            errors.append(f"monitoring/{DASHBOARD}: no {key}")
    ids = []
    for p in dash.get("panels", []):
        ids.append(p.get("id"))
        if not {"h", "w", "x", "y"} <= set(p.get("gridPos", {})):
            errors.append(f"{DASHBOARD}: panel {p.get('title')!r}: gridPos needs h, w, x, y")
        if p.get("type") != "row" and not p.get("targets"):
            errors.append(f"{DASHBOARD}: panel {p.get('title')!r} has no targets")
        for t in p.get("targets", []):
            if not t.get("expr") or not t.get("datasource"):
                errors.append(f"{DASHBOARD}: panel {p.get('title')!r}: target without expr or datasource")
    if len(ids) != len(set(ids)):
        errors.append(f"{DASHBOARD}: panel ids are not unique")
    exprs = []
    walk_exprs(dash, exprs)
    for m in sorted({m for e in exprs for m in re.findall(r"\bdnsteer_[a-z0-9_]+", e)}):
        base = re.sub(r"_(bucket|sum|count)$", "", m)
        if m not in known and base not in known:
            errors.append(f"{DASHBOARD}: metric {m} is not in README's metrics table")
    kust = yaml.safe_load(open(os.path.join(mon_dir, "kustomization.yaml")))
    files = [f for g in kust.get("configMapGenerator", []) for f in g.get("files", [])]
    if DASHBOARD not in files:
        errors.append(f"monitoring/kustomization.yaml: no configMapGenerator for {DASHBOARD}")
    return errors


def main(deploy, readme, out):
    errors = []
    mon_dir = os.path.join(deploy, "monitoring")
    services = [d for _, d in docs_in(deploy) if d.get("kind") == "Service"]
    known = readme_metrics(readme)
    if not known:
        errors.append(f"{readme}: no metrics table found")
    groups = []
    seen = set()

    for f, doc in docs_in(mon_dir):
        kind = doc.get("kind")
        schema = SCHEMAS.get(kind)
        if schema is None:
            errors.append(f"monitoring/{f}: unexpected kind {kind}")
            continue
        seen.add(kind)
        for e in jsonschema.Draft202012Validator(schema).iter_errors(doc):
            path = ".".join(str(p) for p in e.absolute_path) or "(top)"
            errors.append(f"monitoring/{f}: {path}: {e.message}")

        if kind == "ServiceMonitor":
            want = doc.get("spec", {}).get("selector", {}).get("matchLabels", {})
            matches = [s for s in services
                       if want and all(s["metadata"].get("labels", {}).get(k) == v
                                       for k, v in want.items())]
            if len(matches) != 1:
                errors.append(f"monitoring/{f}: selector {want} matches {len(matches)} "
                              "Services in deploy/ (want exactly 1)")
            else:
                ports = {p.get("name") for p in matches[0]["spec"].get("ports", [])}
                for ep in doc["spec"].get("endpoints", []):
                    if ep.get("port") not in ports:
                        errors.append(f"monitoring/{f}: endpoint port {ep.get('port')!r} "
                                      f"not a port of Service {matches[0]['metadata']['name']}")

        if kind == "PrometheusRule":
            for g in doc.get("spec", {}).get("groups", []):
                groups.append(g)
                for r in g.get("rules", []):
                    name = r.get("alert") or r.get("record")
                    if "alert" in r:
                        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                            errors.append(f"{name}: labels.severity must be critical, warning or info")
                        for a in ("summary", "description"):
                            if not r.get("annotations", {}).get(a):
                                errors.append(f"{name}: annotations.{a} missing")
                    used = set(re.findall(r"\bdnsteer_[a-z0-9_]+", r.get("expr", "")))
                    if not used:
                        errors.append(f"{name}: expression uses no dnsteer_ metric")
                    for m in sorted(used):
                        base = re.sub(r"_(bucket|sum|count)$", "", m)
                        if m not in known and base not in known:
                            errors.append(f"{name}: metric {m} is not in README's metrics table")

    errors.extend(check_dashboard(mon_dir, known))
    for kind in SCHEMAS:
        if kind not in seen:
            errors.append(f"monitoring/: no {kind}")
    alerts = [r["alert"] for g in groups for r in g.get("rules", []) if "alert" in r]
    dupes = sorted({a for a in alerts if alerts.count(a) > 1})
    if dupes:
        errors.append(f"duplicate alert names: {', '.join(dupes)}")
    with open(os.path.join(out, "rules.yaml"), "w") as fh:
        yaml.safe_dump({"groups": groups}, fh, sort_keys=False)

    for e in errors:
        print("  " + e, file=sys.stderr)
    if not errors:
        print(f"{len(alerts)} alerts, {len(known)} README metrics", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
