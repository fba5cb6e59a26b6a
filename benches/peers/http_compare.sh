#!/usr/bin/env bash
# facepool's `serve` side by side with the Python peer
# (benches/peers/verify_service.py: FastAPI + uvicorn + ONNX Runtime, one
# worker process per core), both driven over HTTP by `loadgen --target`
# with the same profiles, in one run on the same machine:
#   1. http_saturate (closed loop, 32 clients): each service's capacity,
#      and `serve` against the same profile in-process (the HTTP overhead);
#   2. http_overload (open loop at 2x capacity): refusals, the admitted
#      requests' latency, and each service's memory (its process tree).
# Writes the JSON reports, the .hgrm files and the latency-over-time plots
# under OUT (default target/http-compare), and prints the reports.
#
#   bash benches/peers/http_compare.sh [OUT] [-- extra serve flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-target/http-compare}"
shift || true
[ "${1:-}" = "--" ] && shift
serve_flags=("$@")

py="${PYTHON:-target/peers/bin/python}"
if [ ! -x "$py" ]; then
    python3 -m venv target/peers
    target/peers/bin/pip install -q -r benches/peers/requirements.txt
    py=target/peers/bin/python
fi
bash scripts/fetch-assets.sh >/dev/null
cargo build --release -q --all-features --bin serve --bin loadgen

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
token="bench-$RANDOM$RANDOM"
printf '%s\n' "$token" > "$work/tokens"
export FACEPOOL_TOKEN="$token"

# Reads the `listening on ...` line a server prints once it is up.
listening() {
    local line=""
    read -r -t 180 line < "$1" || true
    line="${line#listening on }"
    [ -n "$line" ] || { echo "http_compare: $2 did not start" >&2; exit 1; }
    echo "${line#http://}"
}

mkfifo "$work/serve.out" "$work/peer.out"
target/release/serve --listen 127.0.0.1:0 --token-file "$work/tokens" "${serve_flags[@]}" \
    > "$work/serve.out" 2> "$work/serve.log" &
serve_pid=$!
pids+=("$serve_pid")
exec 3< "$work/serve.out"
serve_addr="$(listening /dev/fd/3 serve)"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$py" benches/peers/verify_service.py --port "$port" --token-file "$work/tokens" \
    > "$work/peer.out" 2> "$work/peer.log" &
peer_pid=$!
pids+=("$peer_pid")
exec 4< "$work/peer.out"
peer_addr="$(listening /dev/fd/4 python)"

# serve is ready once its models are loaded.
python3 scripts/wait-ready.py "http://$serve_addr/readyz" 120 http_compare

mkdir -p "$out"
targets=(--target "serve=http://$serve_addr" --target-pid "serve=$serve_pid"
         --target "python=http://$peer_addr" --target-pid "python=$peer_pid")
echo "== saturate: serve and the Python peer over HTTP" >&2
target/release/loadgen --profile profiles/http_saturate.toml "${targets[@]}" \
    --out "$out/saturate" --json | tee "$out/saturate.json"
echo "== saturate: the same profile in-process (pool+batch)" >&2
target/release/loadgen --profile profiles/http_saturate.toml --modes pool+batch \
    --json | tee "$out/inprocess.json"
echo "== overload: 2x capacity, open loop" >&2
target/release/loadgen --profile profiles/http_overload.toml "${targets[@]}" \
    --out "$out/overload" --json | tee "$out/overload.json"
