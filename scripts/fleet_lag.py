"""Propagation lag of the fleet gallery: CHANGES enrolls (embeddings) on
node A, one after another; after each is answered, node B is asked for the
person until it has it. Half the enrolls are new people, half replace one
of the first EXISTING people. Prints JSON: the enroll's latency on A and
the lag from A's answer to B's first answer that has it, p50/p99/max, ms.

    python3 scripts/fleet_lag.py HOST_A HOST_B CHANGES DIM EXISTING
"""
import http.client
import json
import random
import sys
import time

a, b, changes, dim, existing = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ca, cb = http.client.HTTPConnection(a), http.client.HTTPConnection(b)
rng = random.Random(29)


def call(conn, method, path, body=None):
    conn.request(method, path, body=body, headers={"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def pct(xs, p):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 2)


enroll, lag = [], []
for i in range(changes):
    if i % 2 == 0 or existing == 0:
        pid, query = f"lag-{i}", ""
    else:
        # examples/index_bench names its people 0, 1, 2, ...
        pid, query = f"{rng.randrange(existing)}", "?replace=true"
    v = [rng.gauss(0, 1) for _ in range(dim)]
    body = json.dumps({"embeddings": [v], "meta": f"change {i}"})
    t0 = time.perf_counter()
    status, data = call(ca, "PUT", f"/v1/people/{pid}{query}", body)
    t1 = time.perf_counter()
    if status != 200:
        sys.exit(f"enroll {pid}: {status} {data[:200]!r}")
    while True:
        status, data = call(cb, "GET", f"/v1/people/{pid}")
        if status == 200 and json.loads(data).get("meta") == f"change {i}":
            break
    t2 = time.perf_counter()
    enroll.append((t1 - t0) * 1e3)
    lag.append((t2 - t1) * 1e3)

print(json.dumps({
    "changes": changes,
    "enroll_ms": {"p50": pct(enroll, 50), "p99": pct(enroll, 99), "max": round(max(enroll), 2)},
    "lag_ms": {"p50": pct(lag, 50), "p99": pct(lag, 99), "max": round(max(lag), 2)},
}))
