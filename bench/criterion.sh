#!/usr/bin/env bash
# Runs every criterion bench REPEAT times (`cargo bench --bench X -- --sample-size 20`) and
# prints, per benchmark, criterion's point estimate (ns, the middle of `time: [..]`) of each run
# and their median.
#   bench/criterion.sh            Env: REPEAT=2  BENCHES="hotpath records ratelimit pipeline"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPEAT="${REPEAT:-2}" BENCHES="${BENCHES:-hotpath records ratelimit pipeline}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
out="$TARGET_DIR/bench/criterion-$(date +%Y%m%d-%H%M%S).tsv"
mkdir -p "$TARGET_DIR/bench"
printf 'bench\tid\trun\testimate_ns\n' >"$out"
for b in $BENCHES; do
  for r in $(seq 1 "$REPEAT"); do
    echo "== cargo bench --bench $b -- --sample-size 20   (run $r/$REPEAT)" >&2
    timeout 600 cargo bench --bench "$b" -- --sample-size 20 >"$TARGET_DIR/bench/criterion-$b-$r.txt" 2>&1
    # Each "time: [low estimate high]" line (the id is on the same or the previous line).
    awk -v b="$b" -v r="$r" '
      function ns(v, u) { return u == "ps" ? v / 1000 : u == "µs" || u == "us" ? v * 1000 : u == "ms" ? v * 1e6 : v }
      /^[A-Za-z0-9_\/]+$/ { id = $1; next }
      /time: +\[/ {
        if ($1 != "time:") id = $1
        for (i = 1; i <= NF; i++) if ($i ~ /^\[/) break
        printf "%s\t%s\t%s\t%.2f\n", b, id, r, ns($(i + 2), $(i + 3))
      }' "$TARGET_DIR/bench/criterion-$b-$r.txt" >>"$out"
  done
done
python3 - "$out" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault((r["bench"], r["id"]), []).append(float(r["estimate_ns"]))
print(f"{'bench':<10} {'id':<40} {'runs (ns)':<24} {'median ns':>10}")
for (b, i), v in by.items():
    print(f"{b:<10} {i:<40} {', '.join('%.1f' % x for x in v):<24} {statistics.median(v):>10.1f}")
PY
echo "raw: $out" >&2
