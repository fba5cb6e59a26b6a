#!/usr/bin/env python3
"""FAISS IndexFlatIP on the data that `examples/index_bench.rs --dump DIR` wrote.

    pip install faiss-cpu==1.12.0 numpy
    cargo run --release --example index_bench -- --n 100000 --dim 512 --queries 1000 --k 10 --dump /tmp/ib
    python3 scripts/faiss_compare.py --dump /tmp/ib --dim 512 --k 10 --threads 2

Prints one JSON object with the same fields as the bench (build_sec,
queries_per_sec for the batch, single_queries_per_sec) and the share of
queries whose top-1 agrees with facepool's.
"""
import argparse
import json
import os
import time

import faiss
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--single", type=int, default=100)
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    base = np.fromfile(os.path.join(a.dump, "base.f32"), dtype="<f4").reshape(-1, a.dim)
    queries = np.fromfile(os.path.join(a.dump, "queries.f32"), dtype="<f4").reshape(-1, a.dim)
    ours = np.fromfile(os.path.join(a.dump, "top1.u32"), dtype="<u4")

    t = time.perf_counter()
    xb = np.ascontiguousarray(base.copy())
    faiss.normalize_L2(xb)
    index = faiss.IndexFlatIP(a.dim)
    index.add(xb)
    build = time.perf_counter() - t

    xq = np.ascontiguousarray(queries.copy())
    faiss.normalize_L2(xq)
    index.search(xq[:16], a.k)  # warm up
    t = time.perf_counter()
    _, ids = index.search(xq, a.k)
    batch = time.perf_counter() - t

    single = min(a.single, len(xq))
    t = time.perf_counter()
    for i in range(single):
        index.search(xq[i : i + 1], a.k)
    one = time.perf_counter() - t

    print(json.dumps({
        "system": "faiss IndexFlatIP " + faiss.__version__,
        "n": len(xb), "dim": a.dim, "k": a.k, "threads": a.threads,
        "queries_per_sec": len(xq) / batch,
        "build_sec": build,
        "single_queries_per_sec": single / one,
        "top1_agreement": float(np.mean(ids[:, 0].astype(np.uint32) == ours)),
    }))


if __name__ == "__main__":
    main()
