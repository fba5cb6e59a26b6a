#!/usr/bin/env bash
# RUSTC_WRAPPER of the fuzz build (scripts/fuzz.sh sets it): adds
# libFuzzer's coverage instrumentation (cargo-fuzz's flags) to the crates
# that fuzz/Cargo.toml's profile compiles with debug assertions (the
# targets, facepool, the parsers it hands outside bytes to), and to
# nothing else.
#
# Why not RUSTFLAGS, as cargo-fuzz does: flags given there apply to every
# crate and are part of each one's fingerprint, so the fuzz build could
# reuse nothing of the root build and compiled tract and the rest of the
# model runtime a second time, its longest chain. Cargo does not see the
# wrapper: every crate that is not fuzzed is the root build's artifact,
# and a fuzzed one, with its own profile, never is.
#
# The model runtime stays uninstrumented: it parses no outside input (the
# models are fixed files), its branches follow tensor shapes, not input
# bytes, and instrumented it spent three quarters of a model run in the
# coverage callbacks.
rustc=$1
shift
case " $* " in
    *" --crate-name build_script_"*) ;;
    *" -C debug-assertions=on "*)
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
exec "$rustc" "$@"
