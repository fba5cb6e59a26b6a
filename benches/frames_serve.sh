#!/usr/bin/env bash
# Camera frames through the service: `serve` with its default flags
# (`--faces auto`: a frame goes through the detector), built from the
# working tree (after) and, when REV is given, from REV (before), on one
# machine in one run.
# For each input (the 55 labelled photos at 150 x 150, and the same photos
# as 1280 x 720 and 1920 x 1080 JPEG frames from examples/frames), a
# fresh server per measurement:
#   - verify: profiles/http_saturate.toml (32 clients, two photos each);
#   - identify: the 5 people enrolled from their first photo, then
#     profiles/http_identify.toml (32 clients, one photo each).
# With REV: before then after, then after then before. Prints requests/s,
# faces/s, p50/p99, refusals and errors (an image without a face found is
# a 422) per run; loadgen's JSON reports go to OUT.
#
#   bash benches/frames_serve.sh [REV] [OUT]   (default: no REV; OUT target/frames-serve)
#   bash benches/frames_serve.sh "$(git log --diff-filter=A --format=%H -- src/face/resize.rs)^"
#                                              (before the frames' resampler)
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:-}"
out="${2:-target/frames-serve}"
mkdir -p "$out"
bash scripts/fetch-assets.sh >/dev/null
source benches/lib.sh

# After's binary first, kept aside (the old build writes target/release/serve).
cargo build --release -q --all-features --bin serve --bin loadgen --example frames
cp target/release/serve "$WORK/serve-after"
rounds=("1 after")
builds="after"
if [ -n "$rev" ]; then
    git worktree add -q --detach "$WORK/before" "$rev"
    trap 'cp "$WORK/serve-after" target/release/serve; git worktree remove --force "$WORK/before" 2>/dev/null || true; bench_cleanup' EXIT
    cargo build --release -q --all-features --bin serve --manifest-path "$WORK/before/Cargo.toml" --target-dir target
    cp target/release/serve "$WORK/serve-before"
    cp "$WORK/serve-after" target/release/serve
    rounds=("1 before after" "2 after before")
    builds="before after"
fi

# loadgen reads its photos from ASSETS/photos/johns: one folder per input.
assets="$(realpath assets)"
declare -A PHOTOS=([photos]="$assets/photos/johns")
for size in 1280x720 1920x1080; do
    [ -f "target/frames/$size/pairs.csv" ] || target/release/examples/frames --size "$size" --out "target/frames/$size"
done
PHOTOS[720p]="$(realpath target/frames/1280x720)"
PHOTOS[1080p]="$(realpath target/frames/1920x1080)"
for input in photos 720p 1080p; do
    mkdir -p "$WORK/assets-$input/photos"
    ln -s "${PHOTOS[$input]}" "$WORK/assets-$input/photos/johns"
done

# Enrolls each person (folder) of DIR on the server at ADDR from the first
# of their photos in which a face is found (a 422 moves on to the next).
enroll() {
    python3 - "$1" "$2" <<'PY'
import base64, json, os, sys, urllib.error, urllib.request
root, addr = sys.argv[1], sys.argv[2]
for person in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
    for photo in sorted(os.listdir(os.path.join(root, person))):
        with open(os.path.join(root, person, photo), "rb") as f:
            body = json.dumps({"images": [base64.b64encode(f.read()).decode()]}).encode()
        req = urllib.request.Request(f"http://{addr}/v1/people/{person}", data=body, method="PUT",
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=60).read()
            break
        except urllib.error.HTTPError as e:
            if e.code != 422:
                raise
    else:
        sys.exit(f"no photo of {person} has a face found")
PY
}

for round in "${rounds[@]}"; do
    set -- $round
    r="$1"
    shift
    for input in photos 720p 1080p; do
        for build in "$@"; do
            for op in verify identify; do
                name="$build-$input-$op"
                echo "== round $r: $name" >&2
                SERVE="$WORK/serve-$build" start_serve "$name"
                profile=profiles/http_saturate.toml
                if [ "$op" = identify ]; then
                    enroll "${PHOTOS[$input]}" "${ADDR[$name]}"
                    profile=profiles/http_identify.toml
                fi
                target/release/loadgen --profile "$profile" --assets "$WORK/assets-$input" \
                    --target "$name=http://${ADDR[$name]}" --target-pid "$name=${PIDS[$name]}" \
                    --json > "$out/$name-$r.json"
                stop "$name"
            done
        done
    done
done

python3 - "$out" "$rev" "$builds" <<'PY'
import json, sys
out, rev, builds = sys.argv[1], sys.argv[2], sys.argv[3].split()
rounds = (1, 2) if len(builds) == 2 else (1,)
print(("serve built from %s (before) and " % rev if rev else "serve built from ") +
      "the working tree (after), default flags; 32 clients, 20 s each" + ("; round 1 / round 2" if rev else ""))
cols = ("requests/s", "faces/s", "p50 ms", "p99 ms", "refused", "errors")
print(f"{'input':<7} {'op':<9} {'serve':<7}" + "".join(f"{c:>15}" for c in cols))
for inp in ("photos", "720p", "1080p"):
    for op in ("verify", "identify"):
        for build in builds:
            ms = [json.load(open(f"{out}/{build}-{inp}-{op}-{r}.json"))["modes"][0] for r in rounds]
            vals = [
                ["%.1f" % m["throughput_rps"] for m in ms],
                ["%.1f" % m["faces_per_sec"] for m in ms],
                ["%.0f" % m["latency_ms"]["p50"] for m in ms],
                ["%.0f" % m["latency_ms"]["p99"] for m in ms],
                [str(m["rejected"]) for m in ms],
                [str(m["errors"]) for m in ms],
            ]
            print(f"{inp:<7} {op:<9} {build:<7}" + "".join(f"{' / '.join(v):>15}" for v in vals))
PY
