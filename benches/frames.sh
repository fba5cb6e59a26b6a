#!/usr/bin/env bash
# Full photos and camera frames through detection: `compare --faces detect
# --no-dedup` built from REV (before) and from the working tree (after), on
# one machine in one run, on:
#   - the 55 labelled photos (150 x 150, all 1,485 pairs),
#   - every 7th of those pairs (213 pairs, 426 frames) as 1280 x 720 and
#     1920 x 1080 JPEG frames (each photo pasted at its own size onto a
#     blurred copy of itself: examples/frames),
#   - every pair of the 12 group photos (66 pairs; the largest face of each);
# with ONNX Runtime before then after, then after then before; with tract
# before then after. Prints, per input and backend: frames/s (images
# through the pipeline per second, a face found or not; per core: over the
# 2 cores the service uses), the `prepare`
# stage's mean and p99 and the inference's mean per face, the mean batch;
# the pairs that failed (an image without a face found), and how many pairs
# changed verdict between before and after (with the labelled pairs'
# accuracy). Writes every run's JSON lines under OUT.
#
#   bash benches/frames.sh [REV] [OUT]   (default REV: HEAD; OUT target/frames-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:-HEAD}"
out="${2:-target/frames-bench}"
mkdir -p "$out"
bash scripts/fetch-assets.sh >/dev/null
source benches/lib.sh

# After's binary first, kept aside (the old build writes target/release/compare).
cargo build --release -q --bin compare --example frames
cp target/release/compare "$WORK/compare-after"
git worktree add -q --detach "$WORK/before" "$rev"
trap 'cp "$WORK/compare-after" target/release/compare; git worktree remove --force "$WORK/before" 2>/dev/null || true; bench_cleanup' EXIT
cargo build --release -q --bin compare --manifest-path "$WORK/before/Cargo.toml" --target-dir target
cp target/release/compare "$WORK/compare-before"
cp "$WORK/compare-after" target/release/compare

frames=target/frames
for size in 1280x720 1920x1080; do
    [ -f "$frames/$size/pairs.csv" ] || target/release/examples/frames --size "$size" --out "$frames/$size"
done
groups="$WORK/groups.csv"
python3 - "$groups" <<'PY'
import itertools, os, sys
photos = sorted(os.listdir("assets/photos/faces"))
with open(sys.argv[1], "w") as f:
    for a, b in itertools.combinations(photos, 2):
        f.write(f"{os.path.abspath('assets/photos/faces/' + a)},{os.path.abspath('assets/photos/faces/' + b)}\n")
PY
for size in 1280x720 1920x1080; do
    awk 'NR % 7 == 1' "$frames/$size/pairs.csv" > "$frames/$size/some-pairs.csv"
done
inputs=("photos=assets/photos/johns/pairs.csv" "720p=$frames/1280x720/some-pairs.csv"
        "1080p=$frames/1920x1080/some-pairs.csv" "groups=$groups")

for round in "before after" "after before"; do
    for input in "${inputs[@]}"; do
        name="${input%%=*}"
        pairs="${input#*=}"
        for backend in ort tract; do
            [ "$backend" = tract ] && [ "$round" = "after before" ] && continue
            for which in $round; do
                echo "== $name $backend $which" >&2
                # (A pair with a frame where no face is found fails, and
                # compare then exits 1: counted below.)
                "$WORK/compare-$which" --pairs "$pairs" --faces detect --no-dedup --backend "$backend" --json \
                    > "$out/$name-$backend-$which-${round%% *}.jsonl" || [ $? -eq 1 ]
            done
        done
    done
done

python3 - "$out" "$rev" <<'PY'
import json, sys
out, rev = sys.argv[1], sys.argv[2]
def load(name, backend, which, first):
    rows = [json.loads(l) for l in open(f"{out}/{name}-{backend}-{which}-{first}.jsonl")]
    summary = next(r["summary"] for r in rows if "summary" in r)
    pairs = {(r["a"], r["b"]): r.get("same") for r in rows if "a" in r}
    return summary, pairs
def stage(summary, name):
    for s in summary["metrics"]["stages"]:
        if s["stage"] == name:
            return s
    return None
print(f"compare --faces detect --no-dedup; before = {rev}, after = the working tree; ONNX Runtime: two rounds (before first, then after first), tract: one")
print(f"{'input':<7} {'backend':<6} {'':<6} {'frames/s':>15} {'per core':>9} {'prepare mean ms':>16} {'prepare p99 ms':>15} {'inference ms':>13} {'batch':>5} {'failed':>6} {'changed':>8} {'accuracy':>9}")
for name in ("photos", "720p", "1080p", "groups"):
    for backend in ("ort", "tract"):
        firsts = ("before", "after") if backend == "ort" else ("before",)
        runs = {w: [load(name, backend, w, f) for f in firsts] for w in ("before", "after")}
        for which in ("before", "after"):
            fps, prep, p99, inf, batch, acc, failed = [], [], [], [], [], [], []
            # (one round: its figure twice)
            for s, _ in runs[which]:
                fps.append(2 * s["pairs"] / s["seconds"])
                p = stage(s, "prepare")
                prep.append(p["mean"])
                p99.append(p["p99"])
                inf.append(stage(s, "inference")["mean"])
                batch.append(s["metrics"]["batch"]["mean"])
                acc.append(s.get("accuracy"))
                failed.append(s["failed"])
            changed = ""
            if which == "after":
                b, a = runs["before"][0][1], runs["after"][0][1]
                changed = str(sum(1 for k in b if b[k] != a.get(k)))
            if len(fps) == 1:
                fps, prep, p99 = fps * 2, prep * 2, p99 * 2
            a = f"{acc[0]:.4f}" if acc[0] is not None else ""
            print(f"{name:<7} {backend:<6} {which:<6} {fps[0]:>7.1f}/{fps[1]:<7.1f} {fps[0]/2:>9.1f} {prep[0]:>7.1f}/{prep[1]:<8.1f} {p99[0]:>7.1f}/{p99[1]:<7.1f} {inf[0]:>13.1f} {batch[0]:>5.2f} {failed[0]:>6} {changed:>8} {a:>9}")
PY
