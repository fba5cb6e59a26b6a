#!/usr/bin/env bash
# RUSTC_WRAPPER of the fuzz build (scripts/fuzz.sh sets it, and
# FUZZ_INSTRUMENT: the crates fuzz/Cargo.toml's profile names, and the
# targets, each a binary crate of its own name): adds
# libFuzzer's coverage instrumentation (cargo-fuzz's flags) to those
# crates (the targets, facepool, the parsers it hands outside bytes to),
# which that profile compiles with debug assertions, and to nothing else.
#
# Why not RUSTFLAGS, as cargo-fuzz does: flags given there apply to every
# crate and are part of each one's fingerprint, so the fuzz build could
# reuse nothing of the root build and compiled tract and the rest of the
# model runtime a second time, its longest chain. Cargo does not see the
# wrapper: every crate that is not fuzzed is the root build's artifact,
# and a fuzzed one, with its own profile, never is. (Nor does it see a
# change to this file: scripts/fuzz.sh then cleans the fuzzed crates.)
#
# The model runtime stays uninstrumented: it parses no outside input (the
# models are fixed files), its branches follow tensor shapes, not input
# bytes, and instrumented it spent three quarters of a model run in the
# coverage callbacks.
rustc=$1
shift
# The crate's name, and whether the profile gave it debug assertions: the
# wrapper instruments a crate only when both say it is fuzzed, so that a
# profile setting from outside (CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS)
# never puts instrumentation into a crate the root build shares.
name=""
prev=""
for a in "$@"; do
    [ "$prev" != --crate-name ] || name=$a
    prev=$a
done
case " $* " in
    *" -C debug-assertions=on "*)
        case "${FUZZ_INSTRUMENT:-}" in
            *" $name "*)
                exec "$rustc" "$@" \
                    -Cpasses=sancov-module \
                    -Cllvm-args=-sanitizer-coverage-level=4 \
                    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
                    -Cllvm-args=-sanitizer-coverage-pc-table \
                    -Cllvm-args=-sanitizer-coverage-trace-compares \
                    -Cllvm-args=-sanitizer-coverage-stack-depth \
                    -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
                    --cfg fuzzing
                ;;
        esac
        ;;
esac
exec "$rustc" "$@"
