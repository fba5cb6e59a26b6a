#!/usr/bin/env bash
# The latency target under overload, open loop, over HTTP, side by side
# with the fixed queue a user would otherwise set. For each backend (ONNX
# Runtime, tract): `serve --latency-target-ms 0` (the fixed queue, 256 faces
# per core) has its capacity measured closed-loop (profiles/
# http_saturate.toml: 32 clients, verify); then each admission, `fixed`
# (--latency-target-ms 0) and `target` (the default, 300 ms), gets the same
# open loops of verify requests at 0.7x, 1x, 2x and 10x that capacity
# (requests start on schedule whatever the latency: no coordinated
# omission), 20 s each. Prints one table (offered, answered, goodput:
# answered within 300 ms, admitted p50/p99, refused and their p99, peak
# RSS) and writes the JSON reports and a plot (p99 and goodput against
# offered load) under OUT. No other flags: the defaults are what is timed.
#
#   bash benches/latency_target.sh [OUT]            (default target/latency-target)
#   SERVE=path/to/serve bash benches/latency_target.sh OUT   (another build)
#   BACKENDS="ort" SECONDS_EACH=20 ...                (what to run)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/latency-target}"
backends="${BACKENDS:-ort tract}"
seconds="${SECONDS_EACH:-20}"
mkdir -p "$out"
bash scripts/fetch-assets.sh >/dev/null
cargo build --release -q --all-features --bin serve --bin loadgen
serve_bin="$(realpath "${SERVE:-target/release/serve}")"

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

# start_serve BACKEND TARGET_MS: starts serve; sets pid and addr.
start_serve() {
    rm -f "$work/serve.out"
    mkfifo "$work/serve.out"
    "$serve_bin" --listen 127.0.0.1:0 --token-file "$work/tokens" --backend "$1" \
        --latency-target-ms "$2" > "$work/serve.out" 2> "$work/serve-$1-$2.log" &
    pid=$!
    local line=""
    read -r -t 180 line < "$work/serve.out" || true
    addr="${line#listening on }"
    python3 scripts/wait-ready.py "http://$addr/readyz" 120 latency_target
}

stop_serve() {
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
}

# open_loops BACKEND ADMISSION: the four open loops against the running serve.
open_loops() {
    for factor in 0.7 1 2 10; do
        rate="$(python3 -c "print(round($capacity * $factor, 1))")"
        echo "== $1 $2: open loop at ${factor}x ($rate verifies/s)" >&2
        cat > "$work/open.toml" <<EOF
description = "open loop at ${factor}x capacity, verify (2 faces)"
modes = ["pool+batch"]
[arrival]
model = "open"
rate = $rate
[stop]
seconds = $seconds
drain_seconds = 30.0
[request]
faces = 2
[slo]
p99_ms = 300.0
EOF
        target/release/loadgen --profile "$work/open.toml" --target "$1=http://$addr" \
            --target-pid "$1=$pid" --json > "$out/$1-$2-$factor.json"
    done
}

for backend in $backends; do
    start_serve "$backend" 0
    echo "== $backend: capacity (closed loop, fixed queue)" >&2
    target/release/loadgen --profile profiles/http_saturate.toml --target "$backend=http://$addr" \
        --target-pid "$backend=$pid" --json > "$out/$backend-capacity.json"
    capacity="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["modes"][0]["throughput_rps"])' "$out/$backend-capacity.json")"
    open_loops "$backend" fixed
    stop_serve
    start_serve "$backend" 300
    open_loops "$backend" target
    stop_serve
done

python3 - "$out" "$backends" <<'PY'
import json, sys
out, backends = sys.argv[1], sys.argv[2].split()
factors = ["0.7", "1", "2", "10"]
rows = []
print(f"{'backend':<8} {'admission':<9} {'load':>5} {'offered/s':>9} {'answered/s':>10} {'goodput/s':>9} {'/capacity':>9} {'p50 ms':>8} {'p99 ms':>8} {'refused':>8} {'refused p99 ms':>14} {'peak MB':>8}")
for b in backends:
    cap = json.load(open(f"{out}/{b}-capacity.json"))["modes"][0]
    print(f"{b:<8} {'fixed':<9} {'sat':>5} {'':>9} {cap['throughput_rps']:>10} {'':>9} {'':>9} {cap['latency_ms']['p50']:>8} {cap['latency_ms']['p99']:>8} {cap['rejected']:>8} {'':>14} {cap['peak_rss_mb']:>8}")
    for mode, f in [(m, f) for m in ("fixed", "target") for f in factors]:
        m = json.load(open(f"{out}/{b}-{mode}-{f}.json"))["modes"][0]
        ratio = m["goodput_rps"] / cap["throughput_rps"]
        rows.append((f"{b} {mode}", factors.index(f), m["offered_rps"], m["goodput_rps"], m["latency_ms"]["p99"]))
        print(f"{b:<8} {mode:<9} {f + 'x':>5} {m['offered_rps']:>9} {m['throughput_rps']:>10} {m['goodput_rps']:>9} {ratio:>9.2f} "
              f"{m['latency_ms']['p50']:>8} {m['latency_ms']['p99']:>8} {m['rejected']:>8} {m['reject_ms']['p99']:>14} {m['peak_rss_mb']:>8}")

# The plot: admitted p99 (left) and goodput (right) against offered load,
# one line per backend, as an SVG written by hand (no plotting package).
W, H, M = 720, 320, 50
colors = {"ort fixed": "#9ecae1", "ort target": "#1f77b4", "tract fixed": "#fcae91", "tract target": "#d62728"}
series = [f"{b} {m}" for b in backends for m in ("fixed", "target")]
def panel(x0, title, key, ymax, unit):
    s = [f'<text x="{x0 + 10}" y="20" font-size="13">{title}</text>',
         f'<line x1="{x0 + M}" y1="{H - M}" x2="{x0 + W/2 - 10}" y2="{H - M}" stroke="#000"/>',
         f'<line x1="{x0 + M}" y1="{M}" x2="{x0 + M}" y2="{H - M}" stroke="#000"/>']
    xs = lambda i: x0 + M + i * (W / 2 - M - 30) / (len(factors) - 1)
    ys = lambda v: H - M - min(v, ymax) / ymax * (H - 2 * M)
    for i, f in enumerate(factors):
        s.append(f'<text x="{xs(i) - 8}" y="{H - M + 16}" font-size="11">{f}x</text>')
    for t in range(5):
        v = ymax * t / 4
        s.append(f'<text x="{x0 + 5}" y="{ys(v) + 4}" font-size="10">{v:.0f}{unit}</text>')
    for b in series:
        pts = [(xs(r[1]), ys(r[key])) for r in rows if r[0] == b]
        s.append('<polyline fill="none" stroke-width="2" stroke="%s" points="%s"/>' % (colors.get(b, "#000"), " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)))
        s.append(f'<text x="{pts[-1][0] - 70}" y="{pts[-1][1] - 6}" font-size="11" fill="{colors.get(b, "#000")}">{b}</text>')
    return s
p99max = max(600.0, max(r[4] for r in rows))
gmax = max(r[3] for r in rows) * 1.2
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
       f'<rect width="{W}" height="{H}" fill="#fff"/>']
svg += panel(0, "admitted p99 (ms) vs offered load", 4, p99max, "")
svg += panel(W / 2, "goodput (answered within 300 ms, /s)", 3, gmax, "")
svg.append(f'<line x1="{M}" x2="{W/2 - 10}" y1="{H - M - 300 / p99max * (H - 2 * M)}" y2="{H - M - 300 / p99max * (H - 2 * M)}" stroke="#888" stroke-dasharray="4"/>')
svg.append("</svg>")
open(f"{out}/latency_target.svg", "w").write("\n".join(svg))
print(f"plot: {out}/latency_target.svg")
PY
