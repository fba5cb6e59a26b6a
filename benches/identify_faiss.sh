#!/usr/bin/env bash
# facepool's index side by side with FAISS IndexFlatIP, in one run, on the
# same data and threads: `examples/index_bench` builds an index of random
# normalised vectors, times the batched and the single-query search and
# dumps the data and its answers; `scripts/faiss_compare.py` (FAISS pinned
# in benches/peers/faiss-requirements.txt, warmed, best of three) searches
# the same data; the ratios and the agreement of the answers are printed.
#
#   bash benches/identify_faiss.sh [N] [QUERIES]     (default 100000 1000)
#   THREADS=2 K=10 DIM=512 bash benches/identify_faiss.sh
#   SCAN=--exact bash benches/identify_faiss.sh   (or --compact; default: chosen
#                                                  by size and CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"
queries="${2:-1000}"
threads="${THREADS:-2}"
k="${K:-10}"
dim="${DIM:-512}"
if [ ! -x target/faiss/bin/python ]; then
    python3 -m venv target/faiss
    target/faiss/bin/pip install -q -r benches/peers/faiss-requirements.txt
fi
cargo build --release -q --example index_bench
dump="$(mktemp -d)"
trap 'rm -rf "$dump"' EXIT
target/release/examples/index_bench --n "$n" --dim "$dim" --queries "$queries" --k "$k" \
    --threads "$threads" --dump "$dump" --json ${SCAN:-} > "$dump/ours.json"
target/faiss/bin/python scripts/faiss_compare.py --dump "$dump" --dim "$dim" --k "$k" \
    --threads "$threads" > "$dump/faiss.json"
python3 - "$dump/ours.json" "$dump/faiss.json" <<'PY'
import json, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{ours['n']:,} x {ours['dim']}, k = {ours['k']}, {ours['threads']} threads, facepool's {ours['method']} scan; FAISS: {theirs['system']}")
print(f"{'':<26} {'facepool':>10} {'FAISS':>10} {'ratio':>7}")
for key, label in [("queries_per_sec", "batch, queries/s"), ("single_queries_per_sec", "one at a time, queries/s")]:
    print(f"{label:<26} {ours[key]:>10.1f} {theirs[key]:>10.1f} {ours[key] / theirs[key]:>6.2f}x")
for key, label in [("single_p50_ms", "single p50, ms"), ("single_p99_ms", "single p99, ms")]:
    print(f"{label:<26} {ours[key]:>10.2f} {theirs[key]:>10.2f}")
print(f"{'build, s':<26} {ours['build_sec']:>10.2f} {theirs['build_sec']:>10.2f}")
print(f"peak RSS of the bench {ours['peak_rss_mb']:.0f} MB (with the generated data)")
print(f"answers: top-1 agree {theirs['top1_agreement']:.3f}, top-{ours['k']} identical {theirs.get('topk_identical', float('nan')):.3f}, recall@{ours['k']} {theirs.get('recall_at_k', float('nan')):.4f}")
PY
