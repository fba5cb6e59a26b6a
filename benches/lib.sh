# Helpers the bench scripts share (`source benches/lib.sh` from the
# repository root): a scratch folder and every process started here, both
# gone on exit; a free loopback port; a broker; `serve` processes.
#
#   start_broker                  nats-server -js on a free port: $BROKER_URL
#   start_serve NAME FLAGS...     serve (or $SERVE) --listen 127.0.0.1:0 --no-auth FLAGS,
#                                 waits for /readyz: ${ADDR[NAME]},
#                                 ${READY[NAME]} (seconds from start to
#                                 ready), ${PIDS[NAME]}; log $WORK/NAME.log
#   stop NAME                     SIGTERM, and waits
#   mem_mb NAME                   resident memory now and at peak, MB

WORK="$(mktemp -d)"
declare -A PIDS=() ADDR=() READY=()
bench_cleanup() {
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap bench_cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_broker() {
    local port
    port="$(free_port)"
    BROKER_URL="nats://127.0.0.1:$port"
    nats-server -js -a 127.0.0.1 -p "$port" -sd "$WORK/js-$port" > "$WORK/nats-$port.log" 2>&1 &
    PIDS[nats-$port]=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nats-server did not start" >&2
    exit 1
}

start_serve() {
    local name="$1" line="" t0
    shift
    rm -f "$WORK/$name.out"
    mkfifo "$WORK/$name.out"
    t0="$(date +%s.%N)"
    RUST_LOG=info "${SERVE:-target/release/serve}" --listen 127.0.0.1:0 --no-auth "$@" \
        > "$WORK/$name.out" 2> "$WORK/$name.log" &
    PIDS[$name]=$!
    read -r -t 600 line < "$WORK/$name.out" || true
    ADDR[$name]="${line#listening on }"
    if [ -z "$line" ]; then
        echo "$name did not start:" >&2
        cat "$WORK/$name.log" >&2
        exit 1
    fi
    if ! python3 scripts/wait-ready.py "http://${ADDR[$name]}/readyz" 600 "$name"; then
        cat "$WORK/$name.log" >&2
        exit 1
    fi
    READY[$name]="$(python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))' "$t0" "$(date +%s.%N)")"
}

stop() {
    kill -TERM "${PIDS[$1]}" 2>/dev/null || true
    wait "${PIDS[$1]}" 2>/dev/null || true
    unset "PIDS[$1]"
}

mem_mb() {
    awk '/VmRSS|VmHWM/ {printf "%s%.0f", sep, $2 / 1024; sep=" "} END {print ""}' "/proc/${PIDS[$1]}/status"
}
