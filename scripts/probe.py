"""Polls URL (a service's /readyz) every INTERVAL seconds for SECONDS and
prints one JSON object: probes sent, failures (not 200, or no answer
within 2 s), and the latency p50/p99/max in ms.

    python3 scripts/probe.py URL SECONDS [INTERVAL]
"""
import json
import sys
import time
import urllib.request

url, seconds = sys.argv[1], float(sys.argv[2])
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
lat, failures = [], 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    t = time.monotonic()
    try:
        ok = urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        ok = False
    lat.append((time.monotonic() - t) * 1e3)
    failures += not ok
    time.sleep(max(0.0, interval - (time.monotonic() - t)))
lat.sort()
pct = lambda p: round(lat[max(0, -(-len(lat) * p // 100) - 1)], 2) if lat else None
print(json.dumps({"probes": len(lat), "failures": failures, "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(lat[-1], 2) if lat else None}))
