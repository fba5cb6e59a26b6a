#!/usr/bin/env bash
# facepool's index side by side with FAISS IndexFlatIP, in one run, on the
# same data and threads: `examples/index_bench` builds an index of random
# normalised vectors and dumps the data and the index file; a second
# process (`index_bench --from`) loads that file, with its vectors left in
# the file (memory holds their 8-bit codes), times the batched and the
# single-query search and writes its answers, so that its peak memory is
# the search's alone; `scripts/faiss_compare.py` (FAISS pinned in
# benches/peers/faiss-requirements.txt, warmed, best of three) searches the
# same data; the ratios and the agreement of the answers are printed.
#
#   bash benches/identify_faiss.sh [N] [QUERIES]     (default 100000 1000)
#   THREADS=2 K=10 DIM=512 bash benches/identify_faiss.sh
#   SCAN=--exact bash benches/identify_faiss.sh   (or --compact; default: chosen
#                                                  by size and CPU)
#   VECTORS=--in-memory bash benches/identify_faiss.sh   (the search process
#                                                  loads the vectors)
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
    --threads "$threads" --dump "$dump" --no-search --json > "$dump/build.json"
target/release/examples/index_bench --from "$dump" --k "$k" --threads "$threads" \
    --json ${SCAN:-} ${VECTORS:-} > "$dump/ours.json"
target/faiss/bin/python scripts/faiss_compare.py --dump "$dump" --dim "$dim" --k "$k" \
    --threads "$threads" > "$dump/faiss.json"
python3 - "$dump/ours.json" "$dump/faiss.json" "$dump/build.json" <<'PY'
import json, sys
ours, theirs, build = (json.load(open(p)) for p in sys.argv[1:4])
ours["build_sec"] = build["build_sec"]
print(f"{ours['n']:,} x {ours['dim']}, k = {ours['k']}, {ours['threads']} threads, facepool's {ours['method']} scan; FAISS: {theirs['system']}")
print(f"{'':<26} {'facepool':>10} {'FAISS':>10} {'ratio':>7}")
for key, label in [("queries_per_sec", "batch, queries/s"), ("single_queries_per_sec", "one at a time, queries/s")]:
    print(f"{label:<26} {ours[key]:>10.1f} {theirs[key]:>10.1f} {ours[key] / theirs[key]:>6.2f}x")
for key, label in [("single_p50_ms", "single p50, ms"), ("single_p99_ms", "single p99, ms")]:
    print(f"{label:<26} {ours[key]:>10.2f} {theirs[key]:>10.2f}")
print(f"{'build, s':<26} {ours['build_sec']:>10.2f} {theirs['build_sec']:>10.2f}")
print(f"{'load, s':<26} {ours['load_sec']:>10.2f}")
print(f"peak RSS of facepool's search process {ours['peak_rss_mb']:.0f} MB (vectors {ours['vectors']}, index in memory {ours['index_memory_mb']:.0f} MB, index file {build['file_bytes'] / 1e6:.0f} MB)")
print(f"answers: top-1 agree {theirs['top1_agreement']:.3f}, top-{ours['k']} identical {theirs.get('topk_identical', float('nan')):.3f}, recall@{ours['k']} {theirs.get('recall_at_k', float('nan')):.4f}")
PY
