#!/usr/bin/env bash
# `serve` against a baseline build of it, in one run on the same machine:
# over HTTP (profiles/http_saturate.toml: 32 clients, verify) and as a NATS
# consumer (profiles/nats_saturate.toml: 64 producers, verify jobs), ROUNDS
# rounds (default 2) that alternate which goes first. Both processes run
# throughout (each takes HTTP and its own NATS prefix); the one not being
# measured is idle. Prints each run's throughput and the ratio of this
# build to the baseline.
#
#   bash benches/before_after.sh BASELINE_SERVE [ROUNDS]
#
# BASELINE_SERVE is a `serve` binary built from another commit, e.g.
#   git worktree add /tmp/base <commit> && (cd /tmp/base && cargo build --release --bin serve)
# (older commits build `serve` by default; newer ones with --features serve).
set -euo pipefail
cd "$(dirname "$0")/.."
base_bin="$(realpath "$1")"
rounds="${2:-2}"
out=target/before-after
mkdir -p "$out"
bash scripts/fetch-assets.sh >/dev/null
cargo build --release -q --all-features --bin serve --bin loadgen

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="nats://127.0.0.1:$port"
nats-server -js -a 127.0.0.1 -p "$port" -sd "$work/js" > "$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

# start NAME BINARY: `serve` on a free port, consuming NATS prefix NAME.
start() {
    mkfifo "$work/$1.out"
    RUST_LOG=info "$2" --listen 127.0.0.1:0 --no-auth --nats "$url" --nats-prefix "$1" \
        --index "$work/$1.fpi" > "$work/$1.out" 2> "$work/$1.log" &
    pids+=($!)
    local line=""
    read -r -t 180 line < "$work/$1.out" || true
    echo "${line#listening on }" > "$work/$1.addr"
    for _ in $(seq 1 1200); do
        grep -q "nats: consuming jobs" "$work/$1.log" && return 0
        sleep 0.1
    done
    echo "before_after: $1 did not start" >&2
    cat "$work/$1.log" >&2
    exit 1
}
start base "$base_bin"
start cur target/release/serve

for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="base cur"; else order="cur base"; fi
    for who in $order; do
        echo "== round $r: $who over HTTP" >&2
        target/release/loadgen --profile profiles/http_saturate.toml \
            --target "$who=http://$(cat "$work/$who.addr")" --json > "$out/http-$who-$r.json"
    done
    for who in $order; do
        echo "== round $r: $who on NATS" >&2
        target/release/loadgen --profile profiles/nats_saturate.toml --nats-prefix "$who" \
            --target "$who=$url" --json > "$out/nats-$who-$r.json"
    done
done

python3 - "$out" "$rounds" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for kind in ("http", "nats"):
    ratios = []
    for r in range(1, rounds + 1):
        rps = {}
        for who in ("base", "cur"):
            m = json.load(open(f"{out}/{kind}-{who}-{r}.json"))["modes"][0]
            rps[who] = m["throughput_rps"]
            print(f"{kind} round {r} {who}: {m['throughput_rps']} requests/s, p50 {m['latency_ms']['p50']} ms, p99 {m['latency_ms']['p99']} ms")
        ratios.append(rps["cur"] / rps["base"])
    print(f"{kind}: this build / baseline = {', '.join(f'{x:.3f}' for x in ratios)} (mean {sum(ratios) / len(ratios):.3f})")
PY
