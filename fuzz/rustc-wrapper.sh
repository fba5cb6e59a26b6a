#!/usr/bin/env bash
# RUSTC_WRAPPER of the fuzz build (scripts/fuzz.sh sets it): the model
# runtime (tract, ndarray and their numeric kernels) is compiled without
# coverage instrumentation and debug assertions. It parses no outside
# input (the models are fixed files), its branches follow tensor shapes,
# not input bytes, and instrumented it spends three quarters of a model run
# in the coverage callbacks: the targets that run the models go about five
# times slower and their corpora fill with numeric noise. Everything else,
# facepool and every parser it calls, keeps cargo-fuzz's flags.
rustc=$1
shift
case " $* " in
    *" --crate-name tract_"* | *" --crate-name ndarray "* | *" --crate-name matrixmultiply "* | \
        *" --crate-name rustfft "*)
        args=()
        for a in "$@"; do
            case $a in
                -Cpasses=sancov-module | -Cdebug-assertions | -Cllvm-args=-sanitizer-coverage-*) ;;
                *) args+=("$a") ;;
            esac
        done
        exec "$rustc" "${args[@]}"
        ;;
esac
exec "$rustc" "$@"
