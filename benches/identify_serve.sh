#!/usr/bin/env bash
# identify through `serve` on a large gallery: PEOPLE random unit vectors of
# the model's 512 dimensions (examples/index_bench writes the index file),
# loaded by `serve --index FILE` once with its vectors left in the file
# (`--index-vectors file`: memory holds their 8-bit codes) and once with
# them in memory. Against each, over HTTP: one client sending identify
# requests back to back (one face each: the single-request latency), then
# eight (searches overlapping); meanwhile a probe asks /readyz every 50 ms.
# Prints, per run: identifies/s, p50/p99 latency, errors, the probes'
# p50/p99/max and failures, and serve's peak RSS; the JSON reports go to OUT.
#
#   bash benches/identify_serve.sh [PEOPLE] [OUT]   (default 1000000 target/identify-serve)
#   SECONDS_EACH=20 VECTORS="file memory" ...      (what to run)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
out="${2:-target/identify-serve}"
seconds="${SECONDS_EACH:-20}"
vectors="${VECTORS:-file memory}"
mkdir -p "$out"
bash scripts/fetch-assets.sh >/dev/null
cargo build --release -q --all-features --bin serve --bin loadgen --example index_bench

work="$(mktemp -d)"
pid=""
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
printf 'bench\n' > "$work/tokens"
export FACEPOOL_TOKEN=bench

echo "== building a gallery of $n people" >&2
target/release/examples/index_bench --n "$n" --queries 1 --dump "$work/g" --no-search --json > "$out/build.json"
rm -f "$work/g/base.f32"

for v in $vectors; do
    rm -f "$work/serve.out"
    mkfifo "$work/serve.out"
    started=$(date +%s.%N)
    target/release/serve --listen 127.0.0.1:0 --token-file "$work/tokens" \
        --index "$work/g/index.fpi" --index-vectors "$v" > "$work/serve.out" 2> "$out/serve-$v.log" &
    pid=$!
    line=""
    read -r -t 300 line < "$work/serve.out" || true
    addr="${line#listening on }"
    python3 scripts/wait-ready.py "http://$addr/readyz" 300 identify_serve
    python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$started" "$(date +%s.%N)" > "$out/ready-$v.txt"
    for clients in 1 8; do
        echo "== vectors in $v: $clients client(s), identify" >&2
        cat > "$work/identify.toml" <<TOML
description = "identify, closed loop, $clients client(s), 1 face each"
modes = ["pool+batch"]
[arrival]
model = "closed"
clients = $clients
honour_retry_after = true
[stop]
seconds = $seconds
[request]
faces = 1
identify = 1.0
[slo]
p99_ms = 1000.0
TOML
        python3 scripts/probe.py "http://$addr/readyz" "$seconds" > "$out/probes-$v-$clients.json" &
        probe=$!
        target/release/loadgen --profile "$work/identify.toml" --target "$v=http://$addr" \
            --target-pid "$v=$pid" --json > "$out/identify-$v-$clients.json"
        wait "$probe"
    done
    grep VmHWM "/proc/$pid/status" | awk '{print $2 / 1024}' > "$out/rss-$v.txt"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
done

python3 - "$out" "$vectors" <<'PY'
import json, sys
out, vectors = sys.argv[1], sys.argv[2].split()
b = json.load(open(f"{out}/build.json"))
print(f"gallery: {b['n']:,} people x {b['dim']}, index file {b['file_bytes'] / 1e6:.0f} MB")
print(f"{'vectors':<8} {'ready s':>7} {'clients':>7} {'identify/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'probes':>6} {'failed':>6} {'probe p50':>9} {'probe p99':>9} {'probe max':>9} {'peak RSS MB':>11}")
for v in vectors:
    ready = open(f"{out}/ready-{v}.txt").read().strip()
    rss = float(open(f"{out}/rss-{v}.txt").read())
    for c in (1, 8):
        m = json.load(open(f"{out}/identify-{v}-{c}.json"))["modes"][0]
        p = json.load(open(f"{out}/probes-{v}-{c}.json"))
        print(f"{v:<8} {ready:>7} {c:>7} {m['throughput_rps']:>10} {m['latency_ms']['p50']:>7} {m['latency_ms']['p99']:>7} {m['errors']:>6} "
              f"{p['probes']:>6} {p['failures']:>6} {p['p50_ms']:>9} {p['p99_ms']:>9} {p['max_ms']:>9} {rss:>11.0f}")
PY
