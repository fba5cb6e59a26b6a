"""Waits until URL answers 200 (a service's /readyz), polling every 0.1 s
for at most SECONDS; exits 1 naming WHO if it never does.

    python3 scripts/wait-ready.py URL SECONDS WHO
"""
import sys
import time
import urllib.request

url, seconds, who = sys.argv[1], float(sys.argv[2]), sys.argv[3]
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        if urllib.request.urlopen(url, timeout=5).status == 200:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(f"{who}: serve never became ready")
