#!/usr/bin/env bash
# The async mode on NATS JetStream, measured on the face model, in one run:
#   1. `compare --pairs --no-dedup` in-process on the same photos (the
#      throughput the async mode is held to);
#   2. `loadgen --target nats://` (profiles/nats_saturate.toml) with one
#      consumer process, then with two;
#   3. TRIALS (default 10) kill trials: an open loop of jobs
#      (profiles/nats_trial.toml) while one of two consumers is killed with
#      SIGKILL at a random moment and restarted; each trial's report says
#      how many jobs were lost or answered twice.
# Starts its own nats-server (Debian's package) on a free loopback port.
# Writes every JSON report under OUT (default target/nats-bench) and prints
# a summary.
#
#   bash benches/nats_bench.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/nats-bench}"
trials="${TRIALS:-10}"
mkdir -p "$out"
bash scripts/fetch-assets.sh >/dev/null
cargo build --release -q --all-features --bin serve --bin loadgen --bin compare

work="$(mktemp -d)"
declare -A pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="nats://127.0.0.1:$port"
nats-server -js -a 127.0.0.1 -p "$port" -sd "$work/js" > "$work/nats.log" 2>&1 &
pids[nats]=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

# consumer NAME: starts `serve --nats` and waits until it consumes.
consumer() {
    local name="$1"
    : > "$work/$name.log"
    RUST_LOG=info target/release/serve --listen 127.0.0.1:0 --no-auth --nats "$url" \
        --index "$work/$name.fpi" > /dev/null 2> "$work/$name.log" &
    pids[$name]=$!
    for _ in $(seq 1 600); do
        grep -q "nats: consuming jobs" "$work/$name.log" && return 0
        sleep 0.1
    done
    echo "nats_bench: consumer $name did not start" >&2
    cat "$work/$name.log" >&2
    exit 1
}

echo "== in-process: compare --pairs --no-dedup" >&2
target/release/compare --pairs assets/photos/johns/pairs.csv --no-dedup --json > "$out/compare.json"

# CPU seconds (user + system) of a process so far, from /proc.
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }

# saturate NAME: the profile against the consumers, with the CPU the
# producer (loadgen) and the broker used while it ran.
saturate() {
    local b0 b1
    b0="$(cpu "${pids[nats]}")"
    /usr/bin/time -f "%U %S" -o "$work/lg.time" \
        target/release/loadgen --profile profiles/nats_saturate.toml --target "$1=$url" --json > "$out/$1.json"
    b1="$(cpu "${pids[nats]}")"
    python3 -c "import sys; u, s = open(sys.argv[1]).read().split()[-2:]; print(float(u) + float(s), float(sys.argv[3]) - float(sys.argv[2]))" \
        "$work/lg.time" "$b0" "$b1" > "$out/$1.cpu"
}

echo "== one consumer" >&2
consumer a
saturate one
echo "== two consumers" >&2
consumer b
saturate two

for i in $(seq 1 "$trials"); do
    echo "== kill trial $i of $trials" >&2
    target/release/loadgen --profile profiles/nats_trial.toml --target "trial$i=$url" --json > "$out/trial$i.json" &
    lg=$!
    sleep "$(python3 -c 'import random; print(round(random.uniform(2, 6), 2))')"
    kill -KILL "${pids[b]}"
    wait "${pids[b]}" 2>/dev/null || true
    consumer b
    wait "$lg"
done

python3 - "$out" "$trials" <<'PY'
import json, sys
out, trials = sys.argv[1], int(sys.argv[2])
c = json.loads(open(f"{out}/compare.json").read().strip().splitlines()[-1])["summary"]
inproc = 2 * c["pairs_per_sec"]
print(f"compare --no-dedup (in-process): {inproc:.1f} faces/s")
for name in ("one", "two"):
    m = json.load(open(f"{out}/{name}.json"))["modes"][0]
    producer, broker = open(f"{out}/{name}.cpu").read().split()
    print(f"{name} consumer(s): {m['throughput_rps']} jobs/s, {m['faces_per_sec']} faces/s "
          f"({m['faces_per_sec'] / inproc:.2f}x in-process; CPU s of the 20 s run: producer {float(producer):.1f}, broker {float(broker):.1f}), "
          f"latency p50 {m['latency_ms']['p50']} p99 {m['latency_ms']['p99']} ms, "
          f"jobs {m['jobs']} results {m['results']} lost {m['lost']} dup {m['duplicates']} dead {m['dead_lettered']}, "
          f"stages {json.dumps(m['stages_ms'])}")
lost = dup = jobs = 0
for i in range(1, trials + 1):
    m = json.load(open(f"{out}/trial{i}.json"))["modes"][0]
    jobs += m["jobs"]; lost += m["lost"]; dup += m["duplicates"]
    print(f"trial {i}: jobs {m['jobs']} results {m['results']} lost {m['lost']} duplicates {m['duplicates']} "
          f"dead {m['dead_lettered']} p99 {m['latency_ms']['p99']} ms")
print(f"kill trials: {trials}, jobs {jobs}, lost {lost}, duplicates {dup}")
PY
