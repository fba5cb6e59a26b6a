#!/usr/bin/env bash
# What the web console costs the API: `serve` built from REV (default: the
# commit before the console was added), `serve` now, and `serve` now with
# --no-console, under profiles/http_saturate.toml (closed loop, 32 clients,
# verify of two photos, 20 s; benches/peers/http_compare.sh's first
# profile), on one machine in one run, each twice in rotating order (so
# none is always measured first), each time on a freshly started server. The old binary is built from a git
# worktree into the same target folder (only facepool is compiled again).
# Writes loadgen's JSON reports under OUT and prints a table.
#
#   bash benches/console_cost.sh [REV] [OUT]   (default target/console-cost)
set -euo pipefail
cd "$(dirname "$0")/.."
added="$(git log --diff-filter=A --format=%H -- src/server/console.rs | tail -1)"
rev="${1:-$added^}"
out="${2:-target/console-cost}"
mkdir -p "$out"
bash scripts/fetch-assets.sh >/dev/null
source benches/lib.sh
# Now's binary first, kept aside: the old build writes target/release/serve,
# and a later build that finds facepool fresh would not write it back.
cargo build --release -q --all-features --bin serve --bin loadgen
cp target/release/serve "$WORK/serve-now"
git worktree add -q --detach "$WORK/before" "$rev"
trap 'cp "$WORK/serve-now" target/release/serve; git worktree remove --force "$WORK/before" 2>/dev/null || true; bench_cleanup' EXIT
cargo build --release -q --all-features --bin serve --manifest-path "$WORK/before/Cargo.toml" --target-dir target
cp target/release/serve "$WORK/serve-before"
cp "$WORK/serve-now" target/release/serve

# A fresh server for each measurement: the adaptive admission keeps what it
# learnt, and a server measured twice would start its second run from its
# first run's state.
start() {
    case "$1" in
        before) SERVE="$WORK/serve-before" start_serve before ;;
        console) SERVE="$WORK/serve-now" start_serve console ;;
        noconsole) SERVE="$WORK/serve-now" start_serve noconsole --no-console ;;
    esac
}
for round in "1 before console noconsole" "2 noconsole console before"; do
    set -- $round
    r="$1"
    shift
    for name in "$@"; do
        echo "== round $r: $name" >&2
        start "$name"
        if [ "$name" = console ]; then
            curl -fsS -o /dev/null "http://${ADDR[console]}/" || { echo "console_cost: no console at /" >&2; exit 1; }
        fi
        target/release/loadgen --profile profiles/http_saturate.toml --target "$name=http://${ADDR[$name]}" \
            --target-pid "$name=${PIDS[$name]}" --json > "$out/$name-$r.json"
        stop "$name"
    done
done

python3 - "$out" "$rev" <<'PY'
import json, sys
out, rev = sys.argv[1], sys.argv[2]
print(f"serve built from {rev} (before) and from the working tree; verify, 32 clients, 20 s each, two rounds")
print(f"{'serve':<22} {'verify/s':>15} {'p50 ms':>13} {'p99 ms':>15}")
names = {"before": "before the console", "console": "with the console", "noconsole": "with --no-console"}
for n, label in names.items():
    ms = [json.load(open(f"{out}/{n}-{r}.json"))["modes"][0] for r in (1, 2)]
    rps = " / ".join(f"{m['throughput_rps']:.1f}" for m in ms)
    p50 = " / ".join(f"{m['latency_ms']['p50']:.1f}" for m in ms)
    p99 = " / ".join(f"{m['latency_ms']['p99']:.1f}" for m in ms)
    print(f"{label:<22} {rps:>15} {p50:>13} {p99:>15}")
PY
