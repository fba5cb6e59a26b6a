#!/usr/bin/env bash
# The fleet gallery (serve --nats without --index: a NATS JetStream
# Key-Value bucket, a replica in every process) against the file gallery,
# in one run, for each gallery size (default 10,000 and 100,000 people of
# random unit vectors of the model's 512 dimensions, written by
# examples/index_bench):
#   1. import: `serve --nats URL --gallery-import FILE` on a fresh broker
#      (node A); the seconds its import took;
#   2. a cold replica: `serve --nats URL` (node B): seconds from start to
#      ready, the seconds its replica took to catch up, its memory; and
#      `serve --index FILE` (the file gallery, vectors in memory) the same;
#   3. propagation: 1,000 enrolls from embeddings on A (half new people,
#      half replacing one), each followed by asking B until it has it
#      (scripts/fleet_lag.py): A's enroll latency, and the lag from A's
#      answer to B's;
#   4. identify through loadgen (8 clients, one face each, SECONDS_EACH s)
#      against B, then against the file gallery, twice (the order
#      alternates, so neither is always measured first).
# Writes the JSON reports under OUT and prints a table.
#
#   bash benches/fleet_gallery.sh ["10000 100000"] [OUT]   (default target/fleet-gallery)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${1:-10000 100000}"
out="${2:-target/fleet-gallery}"
seconds="${SECONDS_EACH:-15}"
mkdir -p "$out"
bash scripts/fetch-assets.sh >/dev/null
cargo build --release -q --all-features --bin serve --bin loadgen --example index_bench
source benches/lib.sh

caught_up() { grep -o 'replica caught up.*' "$WORK/$1.log" | grep -o 'seconds=[0-9.]*' | head -1 | cut -d= -f2; }

for n in $sizes; do
    echo "== $n people" >&2
    target/release/examples/index_bench --n "$n" --queries 1 --dump "$WORK/g$n" --no-search --json > "$out/build-$n.json"
    rm -f "$WORK/g$n/base.f32"
    start_broker
    start_serve "a$n" --nats "$BROKER_URL" --gallery-import "$WORK/g$n/index.fpi"
    import="$(grep -o 'gallery imported.*' "$WORK/a$n.log" | grep -o 'seconds=[0-9.]*' | cut -d= -f2)"
    start_serve "b$n" --nats "$BROKER_URL"
    kv_mem="$(mem_mb "b$n")"
    start_serve "f$n" --index "$WORK/g$n/index.fpi"
    file_mem="$(mem_mb "f$n")"
    python3 scripts/fleet_lag.py "${ADDR[a$n]}" "${ADDR[b$n]}" 1000 512 "$n" > "$out/lag-$n.json"
    stop "a$n"
    cat > "$WORK/identify.toml" <<TOML
description = "identify, closed loop, 8 clients, 1 face each"
modes = ["pool+batch"]
[arrival]
model = "closed"
clients = 8
honour_retry_after = true
[stop]
seconds = $seconds
[request]
faces = 1
identify = 1.0
TOML
    for run in "b 1" "f 1" "f 2" "b 2"; do
        set -- $run
        target/release/loadgen --profile "$WORK/identify.toml" --target "$1=http://${ADDR[$1$n]}" \
            --target-pid "$1=${PIDS[$1$n]}" --json > "$out/identify-$1-$n-$2.json"
    done
    python3 - "$out/start-$n.json" "$n" "$import" "${READY[b$n]}" "$(caught_up "b$n")" "$kv_mem" "${READY[f$n]}" "$file_mem" <<'PY'
import json, sys
path, n, imp, ready, caught, kv, fready, fm = sys.argv[1:]
kv_now, kv_peak = map(float, kv.split())
f_now, f_peak = map(float, fm.split())
json.dump({"people": int(n), "import_s": float(imp), "kv": {"ready_s": float(ready), "catch_up_s": float(caught), "rss_mb": kv_now, "peak_mb": kv_peak},
           "file": {"ready_s": float(fready), "rss_mb": f_now, "peak_mb": f_peak}}, open(path, "w"))
PY
    stop "b$n"
    stop "f$n"
done

python3 - "$out" "$sizes" <<'PY'
import json, sys
out, sizes = sys.argv[1], sys.argv[2].split()
print(f"{'people':>8} {'gallery':<6} {'import s':>8} {'ready s':>7} {'catch-up s':>10} {'RSS MB':>6} {'peak MB':>7} {'identify/s':>13} {'p99 ms':>13} {'enroll p50/p99 ms':>17} {'lag p50/p99/max ms':>18}")
for n in sizes:
    s = json.load(open(f"{out}/start-{n}.json"))
    lag = json.load(open(f"{out}/lag-{n}.json"))
    for g, name in (("b", "nats"), ("f", "file")):
        ms = [json.load(open(f"{out}/identify-{g}-{n}-{r}.json"))["modes"][0] for r in (1, 2)]
        rps = " / ".join(str(m["throughput_rps"]) for m in ms)
        p99 = " / ".join(str(m["latency_ms"]["p99"]) for m in ms)
        st = s["kv"] if g == "b" else s["file"]
        imp = f"{s['import_s']:.2f}" if g == "b" else "-"
        cu = f"{st['catch_up_s']:.2f}" if g == "b" else "-"
        e = f"{lag['enroll_ms']['p50']}/{lag['enroll_ms']['p99']}" if g == "b" else "-"
        l = f"{lag['lag_ms']['p50']}/{lag['lag_ms']['p99']}/{lag['lag_ms']['max']}" if g == "b" else "-"
        print(f"{int(n):>8} {name:<6} {imp:>8} {st['ready_s']:>7} {cu:>10} {st['rss_mb']:>6.0f} {st['peak_mb']:>7.0f} {rps:>13} {p99:>13} {e:>17} {l:>18}")
PY
