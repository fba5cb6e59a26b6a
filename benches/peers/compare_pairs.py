"""The Python peer of `compare --pairs --faces aligned --no-dedup`: the same
pairs, the same model and the same chip alignment, written as a competent
Python user would: images decoded and aligned by a thread pool (Pillow
releases the GIL), faces embedded in batches of 32 by ONNX Runtime with
2 intra-op threads, cosine similarity against the same threshold.

    python3 benches/peers/compare_pairs.py assets/photos/johns/pairs.csv \
        --model assets/models/fr_feature.onnx [--limit N] [--json]

Prints one summary: pairs, faces/s, seconds, accuracy.
"""

import argparse
import concurrent.futures
import csv
import json
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

# The dlib 150x150 chip onto the 112x112 ArcFace frame (facepool's
# face::align::DLIB_CHIP_SCALE and DLIB_CHIP_SHIFT).
SCALE, SHIFT = 0.6869, (5.196, 20.27)
SIZE = 112
THRESHOLD = 0.40  # facepool's face::DEFAULT_THRESHOLD


def batchable(path):
    """The model with a free batch dimension (it ships fixed at 1). Its
    last Reshape gives [1, N*512] at batch N, row-major equal to [N, 512]."""
    m = onnx.load(path)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for o in m.graph.output:
        for d in o.type.tensor_type.shape.dim:
            d.dim_param = "M"
    return m.SerializeToString()


def chip(path):
    """Decodes a chip and warps it into the face frame: face = a * src + t,
    bilinear, black outside (PIL samples at pixel centres, hence the 0.5)."""
    img = Image.open(path).convert("RGB")
    a = SCALE * 150.0 / img.width
    data = (1 / a, 0, -(0.5 + SHIFT[0]) / a + 0.5, 0, 1 / a, -(0.5 + SHIFT[1]) / a + 0.5)
    face = img.transform((SIZE, SIZE), Image.AFFINE, data, resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    x = (np.asarray(face, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("pairs")
    p.add_argument("--model", default="assets/models/fr_feature.onnx")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--intra-threads", type=int, default=2)
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    base = os.path.dirname(a.pairs)
    pairs = []
    with open(a.pairs) as f:
        for row in csv.reader(f):
            if len(row) < 2 or row[0].strip().lower() == "a" or row[0].startswith("#"):
                continue
            label = None
            if len(row) > 2:
                label = row[2].strip().lower() in ("1", "same", "true", "yes")
            pairs.append((os.path.join(base, row[0].strip()), os.path.join(base, row[1].strip()), label))
    if a.limit:
        pairs = pairs[: a.limit]

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.intra_threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(batchable(a.model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    t0 = time.perf_counter()
    # Every image of every pair, in order (no dedup: the same work as
    # `compare --pairs --no-dedup`).
    paths = [x for a_, b_, _ in pairs for x in (a_, b_)]
    embs = np.empty((len(paths), 512), dtype=np.float32)
    with concurrent.futures.ThreadPoolExecutor(a.decode_threads) as pool:
        faces = pool.map(chip, paths)
        batch, start = [], 0
        for face in faces:
            batch.append(face)
            if len(batch) == a.batch:
                out = sess.run(None, {name: np.stack(batch)})[0].reshape(len(batch), -1)
                embs[start : start + len(batch)] = out
                start += len(batch)
                batch = []
        if batch:
            out = sess.run(None, {name: np.stack(batch)})[0].reshape(len(batch), -1)
            embs[start : start + len(batch)] = out
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    sims = np.sum(embs[0::2] * embs[1::2], axis=1)
    secs = time.perf_counter() - t0

    labelled = [(s >= THRESHOLD, l) for s, (_, _, l) in zip(sims, pairs) if l is not None]
    accuracy = sum(v == l for v, l in labelled) / len(labelled) if labelled else None
    summary = {
        "pairs": len(pairs),
        "faces": len(paths),
        "seconds": round(secs, 2),
        "faces_per_sec": round(len(paths) / secs, 1),
        "accuracy": accuracy,
        "onnxruntime": ort.__version__,
    }
    print(json.dumps(summary) if a.json else summary)


if __name__ == "__main__":
    main()
