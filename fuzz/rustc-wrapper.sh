#!/usr/bin/env bash
# RUSTC_WRAPPER of the fuzz build (scripts/fuzz.sh sets it): the model
# runtime (tract, ndarray and their numeric kernels) is compiled without
# coverage instrumentation and debug assertions. It parses no outside
# input (the models are fixed files), its branches follow tensor shapes,
# not input bytes, and instrumented it spends three quarters of a model run
# in the coverage callbacks: the targets that run the models go about five
# times slower and their corpora fill with numeric noise. It is also
# compiled in cargo's default code-generation units instead of cargo-fuzz's
# one (which only helps coverage counters, and these have none), so the
# largest crates of the build use both cores, and without debug info (a
# crash's backtrace names facepool's lines, not the kernels'): tract-core
# alone is the longest compile of the build, and its debug info a good
# part of it. Everything else, facepool and every parser it calls, keeps
# cargo-fuzz's flags.
rustc=$1
shift
case " $* " in
    *" --crate-name tract_"* | *" --crate-name ndarray "* | *" --crate-name matrixmultiply "* | \
        *" --crate-name rustfft "*)
        args=()
        for a in "$@"; do
            case $a in
                -Cpasses=sancov-module | -Cdebug-assertions | -Cllvm-args=-sanitizer-coverage-* | -Ccodegen-units=1) ;;
                *) args+=("$a") ;;
            esac
        done
        # rustc takes the last of a repeated codegen option.
        exec "$rustc" "${args[@]}" -Cdebuginfo=0
        ;;
esac
exec "$rustc" "$@"
