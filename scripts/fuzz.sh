#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets of fuzz/ (libFuzzer, through the
# libfuzzer-sys crate) on the stable toolchain:
#
#   scripts/fuzz.sh TARGET SECONDS    one target for SECONDS
#   scripts/fuzz.sh all SECONDS       every target, SECONDS each
#   scripts/fuzz.sh list              the targets
#
# Targets: decode, prepare, index_load, pairs_csv, loadgen_profile,
# http_bodies, nats_job, gallery_entry (what each asserts: the comment at the top of
# fuzz/fuzz_targets/TARGET.rs).
#
# Seeds: fuzz/corpus/TARGET (committed, small; what a run finds is added
# there and git-ignored), plus the fetched photos for the image and HTTP
# targets and profiles/ for the profile target. A crash, a failed
# assertion or a timeout leaves its input in fuzz/artifacts/TARGET/ and
# makes the script exit non-zero (after the other targets of `all` ran);
# replay one with `target/release/TARGET FILE` (the binary this script
# built).
#
# The build: cargo-fuzz's flags, without cargo-fuzz, on the fuzzed
# crates only (`--cfg fuzzing` too: the others are compiled as the root
# build compiles them). The targets are built with cargo into the root's
# target dir, where they reuse the root build's artifacts (the test
# command's: every feature): only the fuzzed crates (instrumented by
# fuzz/rustc-wrapper.sh), the few that depend on them (axum) and
# libFuzzer are compiled for them (which crates, and what the reuse
# needs: the header of fuzz/Cargo.toml). Without a root build first, this
# one compiles everything it needs itself.
#
# No sanitizer: AddressSanitizer needs nightly's -Zsanitizer, and the
# targets are safe Rust above libraries that are too; what they look for
# is panics, failed assertions, unbounded memory (the decode target counts
# its allocations itself) and slow inputs.
#
# Environment: FUZZ_TIMEOUT (seconds per input, default 5; 20 for the
# targets that run the models), FUZZ_RSS_MB (default 4096), FUZZ_LOGS (the
# logs' folder, default fuzz/target/logs), FUZZ_LANES (targets run at once,
# default one a core), CARGO_TARGET_DIR (default target; the root build's,
# to reuse it), CARGO_BUILD_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS="decode prepare index_load pairs_csv loadgen_profile http_bodies nats_job gallery_entry"

say() { printf 'fuzz: %s\n' "$*" >&2; }
usage() {
    echo "usage: scripts/fuzz.sh TARGET|all SECONDS | list" >&2
    echo "targets: $TARGETS" >&2
    exit 2
}

[ $# -ge 1 ] || usage
if [ "$1" = list ]; then
    printf '%s\n' $TARGETS
    exit 0
fi
[ $# -eq 2 ] || usage
WHAT=$1
SECONDS_EACH=$2
case "$SECONDS_EACH" in '' | *[!0-9]*) usage ;; esac
if [ "$WHAT" = all ]; then
    RUN=$TARGETS
else
    case " $TARGETS " in *" $WHAT "*) RUN=$WHAT ;; *) usage ;; esac
fi

needs_assets=false
for t in $RUN; do
    case $t in decode | prepare | http_bodies) needs_assets=true ;; esac
done
if $needs_assets; then
    bash scripts/fetch-assets.sh
fi

# The versions fuzz/Cargo.lock pins should be Cargo.lock's: a crate at
# another version is compiled again (correct, only slower).
drift=$(awk '
    FNR == 1 { name = "" }
    /^name = / { name = $3 }
    /^version = "/ {
        if (FILENAME == ARGV[1]) { pinned[name, $3] = 1; known[name] = 1 }
        else if ((name in known) && !((name, $3) in pinned)) printf " %s", name
    }' Cargo.lock fuzz/Cargo.lock | tr -d '"')
if [ -n "$drift" ]; then
    say "fuzz/Cargo.lock pins other versions than Cargo.lock of:$drift (compiled again; to align: cp Cargo.lock fuzz/Cargo.lock && cargo metadata --manifest-path fuzz/Cargo.toml >/dev/null)"
fi

TARGET_DIR=${CARGO_TARGET_DIR:-${CARGO_BUILD_TARGET_DIR:-$PWD/target}}
# The fuzzed crates: those fuzz/Cargo.toml's profile names, and the
# targets (each binary is a crate of its own name, some with the parser
# they test in it). The wrapper instruments these (by their crate names,
# as rustc sees them) and nothing else.
fuzzed=$(sed -n 's/^\[profile\.release\.package\.\([A-Za-z0-9_-]*\)\]$/\1/p' fuzz/Cargo.toml)
FUZZ_INSTRUMENT=" $(printf '%s\n' $fuzzed $TARGETS | tr '-' '_' | tr '\n' ' ')"
export FUZZ_INSTRUMENT
# Cargo does not see the wrapper: when it or the list changes, the fuzzed
# crates are cleaned, so that none keeps the instrumentation of before
# (this also removes the root build's copies of them, built again when
# next needed).
stamp=$TARGET_DIR/fuzz-instrumentation
now=$(cat fuzz/rustc-wrapper.sh <(echo "$FUZZ_INSTRUMENT") | cksum)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$now" ]; then
    say "the instrumentation changed: cleaning the fuzzed crates"
    for c in $fuzzed; do
        cargo clean --release -q --manifest-path fuzz/Cargo.toml --target-dir "$TARGET_DIR" -p "$c"
    done
fi
say "building the targets (release, the fuzzed crates instrumented, debug assertions, no sanitizer)"
if ! RUSTC_WRAPPER="$PWD/fuzz/rustc-wrapper.sh" \
    cargo build --release --locked --manifest-path fuzz/Cargo.toml --target-dir "$TARGET_DIR" --bins; then
    say "the build failed; if cargo says fuzz/Cargo.lock needs updating (a dependency changed in Cargo.toml): cp Cargo.lock fuzz/Cargo.lock && cargo metadata --manifest-path fuzz/Cargo.toml >/dev/null, and commit it"
    exit 1
fi
mkdir -p "$TARGET_DIR" && printf '%s\n' "$now" >"$stamp"

# Extra seeds made from the fetched photos (never committed): a few small
# photos as they are, and for the HTTP target wrapped as its inputs (route
# byte, body-mode byte, then the photo: verify, embed as a form, enroll,
# identify as a data: URL).
SEEDS=fuzz/target/seeds
photos() {
    find assets/photos/johns -name '*_1.jpg' 2>/dev/null | sort | head -n 5
    find assets/photos/faces -name '*.jpg' -size -120k 2>/dev/null | sort | head -n 4
}
make_seeds() { # TARGET: prints the extra seed folders
    local t=$1 d=$SEEDS/$1
    case $t in
        decode | prepare)
            rm -rf "$d" && mkdir -p "$d"
            photos | while read -r p; do cp "$p" "$d/"; done
            echo "$d"
            ;;
        http_bodies)
            rm -rf "$d" && mkdir -p "$d"
            local i=0
            photos | head -n 4 | while read -r p; do
                i=$((i + 1))
                { printf '\000\002'; cat "$p"; } >"$d/verify-$i"
                { printf '\003\003'; cat "$p"; } >"$d/embed-form-$i"
                { printf '\004\002'; cat "$p"; } >"$d/enroll-$i"
                { printf '\002\007'; cat "$p"; } >"$d/identify-$i"
            done
            echo "$d"
            ;;
        loadgen_profile) echo profiles ;;
    esac
}

dict_of() {
    case $1 in
        decode | prepare) echo fuzz/dicts/image.dict ;;
        index_load) echo fuzz/dicts/index.dict ;;
        pairs_csv) echo fuzz/dicts/pairs.dict ;;
        loadgen_profile) echo fuzz/dicts/toml.dict ;;
        http_bodies | nats_job) echo fuzz/dicts/json_api.dict ;;
        gallery_entry) echo fuzz/dicts/gallery.dict ;;
    esac
}

# Logs: one per target, replaced by each run (two runs sharing a target
# folder need their own FUZZ_LOGS: two writers of one log leave it with
# runs of NUL bytes). grep -a: a log is read as text whatever it holds.
LOGS=${FUZZ_LOGS:-fuzz/target/logs}
mkdir -p "$LOGS"
# One target's run: its summary line in $LOGS/TARGET.line; its exit
# status libFuzzer's.
run_target() {
    local t=$1 corpus=fuzz/corpus/$1 extra timeout log rc execs cov ft files crashes line
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    extra=$(make_seeds "$t")
    case $t in prepare | http_bodies) timeout=${FUZZ_TIMEOUT:-20} ;; *) timeout=${FUZZ_TIMEOUT:-5} ;; esac
    log=$LOGS/$t.log
    say "$t for ${SECONDS_EACH} s (log: $log)"
    # One process, one fuzzing thread: libFuzzer's default (-jobs/-workers
    # would fork children that log to files instead).
    set +e
    # shellcheck disable=SC2086 # $extra: zero or one folder
    "$TARGET_DIR/release/$t" \
        -dict="$(dict_of "$t")" \
        -max_total_time="$SECONDS_EACH" \
        -timeout="$timeout" \
        -rss_limit_mb="${FUZZ_RSS_MB:-4096}" \
        -artifact_prefix="fuzz/artifacts/$t/" \
        -print_final_stats=1 \
        "$corpus" $extra 2>&1 | tee "$log" |
        grep -aE '^#[0-9]+[[:space:]]+(INITED|DONE)|^==[0-9]+==|^SUMMARY|panicked at|Test unit written|ERROR:|^stat::' |
        sed -u "s/^/$t: /"
    rc=${PIPESTATUS[0]}
    set -e
    execs=$(grep -aE '^stat::number_of_executed_units' "$log" | tail -n 1 | awk '{print $2}')
    cov=$(grep -aoE 'cov: [0-9]+' "$log" | tail -n 1 | awk '{print $2}')
    ft=$(grep -aoE 'ft: [0-9]+' "$log" | tail -n 1 | awk '{print $2}')
    files=$(find "$corpus" -type f | wc -l)
    crashes=$(find "fuzz/artifacts/$t" -type f | wc -l)
    line="$t: ${SECONDS_EACH} s, ${execs:-?} execs, cov ${cov:-?} edges, ft ${ft:-?}, corpus $files files, artifacts $crashes, exit $rc"
    say "$line"
    printf '%s\n' "$line" >"$LOGS/$t.line"
    if [ "$rc" -ne 0 ]; then
        say "$t FAILED: input(s) in fuzz/artifacts/$t/ (see $log)"
    fi
    return "$rc"
}

# The targets in FUZZ_LANES lanes at once (default: one a core), each
# lane one target after another: a libFuzzer process fuzzes on one
# thread, so a 2-core machine runs `all` in half the time. Lane l takes
# the targets l, l + lanes, ...
LANES=${FUZZ_LANES:-$(nproc)}
case "$LANES" in '' | 0 | *[!0-9]*) LANES=1 ;; esac
for t in $RUN; do rm -f "$LOGS/$t.line"; done
lanes=()
for ((l = 0; l < LANES; l++)); do
    # A target's outcome is its .line file, read below.
    (
        i=0
        for t in $RUN; do
            if [ $((i % LANES)) -eq "$l" ]; then
                run_target "$t" || true
            fi
            i=$((i + 1))
        done
    ) &
    lanes+=($!)
done
wait "${lanes[@]}"

failed=""
summary=""
for t in $RUN; do
    line=$(cat "$LOGS/$t.line" 2>/dev/null || echo "$t: no result (its lane ended early)")
    summary+="$line"$'\n'
    case $line in *", exit 0") ;; *) failed+=" $t" ;; esac
done

printf '\n%s' "$summary"
if [ -n "$failed" ]; then
    say "failed:$failed"
    exit 1
fi
