"""The Python peer of facepool's `serve` for `POST /v1/verify`, written as a
competent Python user would: FastAPI on uvicorn with `--workers N`
processes, each worker holding one ONNX Runtime session (1 intra-op and
1 inter-op thread by default). The same model and the same chip alignment
as compare_pairs.py (its `batchable()` and `chip()` are imported, not
copied): both faces of a request are embedded in ONE `session.run` as a
batch of 2, and their cosine similarity is compared with the same
threshold.

    python3 benches/peers/verify_service.py --port 8099 --token-file tokens.txt \
        [--host 127.0.0.1] [--workers N] [--intra-threads 1] \
        [--model assets/models/fr_feature.onnx] [--access-log]

`--port` is required (no port 0: the workers share one socket that
uvicorn binds, so pick a free port up front). Prints one line,
`listening on http://HOST:PORT`, on stdout once every worker has loaded the
model and the socket answers (facepool's `serve` prints `listening on ADDR`
at bind time and answers `/readyz` 503 until loaded; here `/readyz` is 200
as soon as anything answers). uvicorn's own logs go to stderr. SIGTERM or
SIGINT stops it (uvicorn's shutdown: the parent stops its workers, each
finishes its in-flight requests). Exit codes: 0 after a clean stop, 2 for
usage errors, non-zero when it stops before it was ready (a worker's
start-up failed, the port was taken, or a signal came first).

The API (the subset of facepool's that the benchmark drives):

    POST /v1/verify   Authorization: Bearer TOKEN
                      {"image1": "<base64>", "image2": "<base64>"}
        200 {"similarity": float, "same": bool, "threshold": 0.40}
        401 no bearer token, 403 a token not in --token-file,
        400 bad JSON / bad base64 / empty image, 422 not an image,
        all errors as {"error": {"code": ..., "message": ...}}
    GET  /livez, /readyz   200 {"status": "ok"}

The endpoint is a plain `def`: FastAPI runs it in its threadpool (anyio's,
40 threads per worker), where Pillow's decoding and ORT's `run` release the
GIL; the token check is an `async def` dependency that runs on the event
loop. One caveat of FastAPI's order: a body that is not JSON at all is
refused (400) before the token is checked.

Settings reach the workers (separate processes that import
`verify_service:app`) through FACEPOOL_PEER_* environment variables that
`main()` sets before starting uvicorn; each worker reads them in its
lifespan startup.
"""

import argparse
import base64
import binascii
import contextlib
import hmac
import io
import os
import shutil
import sys
import tempfile
import threading
import urllib.request

# compare_pairs.py sits next to this file; uvicorn's workers import this
# module by name from the same directory.
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from fastapi import Depends, FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from compare_pairs import SIZE, THRESHOLD, batchable, chip  # noqa: E402

ENV_MODEL = "FACEPOOL_PEER_MODEL"
ENV_TOKEN_FILE = "FACEPOOL_PEER_TOKEN_FILE"
ENV_INTRA = "FACEPOOL_PEER_INTRA_THREADS"
ENV_READY_DIR = "FACEPOOL_PEER_READY_DIR"


def read_tokens(path):
    """Bearer tokens, one per line (blank lines and # comments skipped),
    as facepool's `serve --token-file` reads them."""
    with open(path, encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return [line.encode() for line in lines if line and not line.startswith("#")]


def new_session(model, intra_threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(batchable(model), so, providers=["CPUExecutionProvider"])


class ApiError(Exception):
    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status, code, message, headers=None):
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


@contextlib.asynccontextmanager
async def lifespan(app):
    """Per worker: the tokens, one session, a warm-up run, then a ready mark
    for the parent (see `main`)."""
    model = os.environ.get(ENV_MODEL, "assets/models/fr_feature.onnx")
    app.state.tokens = read_tokens(os.environ[ENV_TOKEN_FILE])
    app.state.session = new_session(model, int(os.environ.get(ENV_INTRA, "1")))
    app.state.input_name = app.state.session.get_inputs()[0].name
    app.state.session.run(None, {app.state.input_name: np.zeros((2, 3, SIZE, SIZE), np.float32)})
    ready_dir = os.environ.get(ENV_READY_DIR)
    if ready_dir:
        with contextlib.suppress(OSError):
            open(os.path.join(ready_dir, str(os.getpid())), "w").close()
    yield


app = FastAPI(title="facepool verify peer", lifespan=lifespan)


@app.exception_handler(ApiError)
async def api_error(_request, e):
    return error_response(e.status, e.code, e.message, e.headers)


@app.exception_handler(RequestValidationError)
async def bad_body(_request, e):
    msg = "; ".join(
        f"{'.'.join(map(str, err['loc']))}: {err['msg']}"
        + (f" ({err['ctx']['error']})" if isinstance(err.get("ctx", {}).get("error"), str) else "")
        for err in e.errors()
    )
    return error_response(400, "bad_json", msg or "bad request body")


@app.exception_handler(StarletteHTTPException)
async def http_error(_request, e):
    code = {404: "no_route", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return error_response(e.status_code, code, str(e.detail), getattr(e, "headers", None))


@app.exception_handler(Exception)
async def internal_error(_request, e):
    return error_response(500, "internal", f"{type(e).__name__}: {e}")


async def require_token(request: Request):
    """401 without `Authorization: Bearer ...`, 403 with a token not in the
    file (each compared in constant time, all of them every time)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() != "bearer ":
        raise ApiError(401, "unauthorized", "an Authorization: Bearer token is required",
                       {"WWW-Authenticate": "Bearer"})
    given = header[7:].strip().encode()
    ok = False
    for token in request.app.state.tokens:
        ok |= hmac.compare_digest(given, token)
    if not ok:
        raise ApiError(403, "forbidden", "the token is not accepted", {"WWW-Authenticate": "Bearer"})


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image1: str
    image2: str


class VerifyResponse(BaseModel):
    similarity: float
    same: bool
    threshold: float


def decode_base64(field, s):
    """The image bytes of a base64 field (a `data:...;base64,` prefix is
    allowed, as facepool allows it)."""
    s = s.strip()
    if s.startswith("data:"):
        rest = s[5:]
        s = rest.split(",", 1)[1] if "," in rest else rest
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, "bad_base64", f"{field}: not base64: {e}") from None
    if not data:
        raise ApiError(400, "empty_image", f"{field}: empty")
    return data


def face_of(field, data):
    """The aligned 3x112x112 face of a chip image (compare_pairs.chip: the
    same decode, warp and normalisation)."""
    try:
        return chip(io.BytesIO(data))
    except Exception as e:  # any decoding failure is the client's image
        raise ApiError(422, "not_an_image", f"{field}: not an image: {e}") from None


@app.post("/v1/verify", response_model=VerifyResponse, dependencies=[Depends(require_token)])
def verify(body: VerifyRequest, request: Request):
    faces = np.stack([
        face_of("image1", decode_base64("image1", body.image1)),
        face_of("image2", decode_base64("image2", body.image2)),
    ])
    st = request.app.state
    # At batch N the model's output is [1, N*512], row-major [N, 512].
    emb = st.session.run(None, {st.input_name: faces})[0].reshape(2, -1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    similarity = float(emb[0] @ emb[1])
    return VerifyResponse(similarity=similarity, same=similarity >= THRESHOLD, threshold=THRESHOLD)


@app.get("/livez")
async def livez():
    return {"status": "ok"}


@app.get("/readyz")
async def readyz():
    return {"status": "ok"}


def announce_when_ready(host, port, workers, ready_dir, stop, announced):
    """Prints `listening on http://HOST:PORT` once every worker has marked
    itself ready and /livez answers (the parent cannot see its workers'
    start-up otherwise)."""
    url = f"http://{host}:{port}"
    while not stop.is_set():
        try:
            if len(os.listdir(ready_dir)) >= workers:
                with urllib.request.urlopen(url + "/livez", timeout=2) as r:
                    if r.status == 200:
                        print(f"listening on {url}", flush=True)
                        announced.set()
                        return
        except OSError:
            pass
        stop.wait(0.05)


def main():
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="a free port (0 is not supported)")
    p.add_argument("--token-file", required=True, help="bearer tokens, one per line")
    p.add_argument("--model", default="assets/models/fr_feature.onnx")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--intra-threads", type=int, default=1)
    p.add_argument("--access-log", action="store_true", help="log every request to stdout (off: it costs throughput)")
    a = p.parse_args()
    if not 0 < a.port < 65536:
        p.error("--port must be 1 to 65535")
    if a.workers < 1 or a.intra_threads < 1:
        p.error("--workers and --intra-threads must be at least 1")
    if not os.path.isfile(a.model):
        p.error(f"no model at {a.model}")
    try:
        if not read_tokens(a.token_file):
            p.error(f"{a.token_file} holds no token")
    except OSError as e:
        p.error(f"cannot read {a.token_file}: {e}")

    ready_dir = tempfile.mkdtemp(prefix="verify-peer-")
    os.environ.update({
        ENV_MODEL: os.path.abspath(a.model),
        ENV_TOKEN_FILE: os.path.abspath(a.token_file),
        ENV_INTRA: str(a.intra_threads),
        ENV_READY_DIR: ready_dir,
    })
    stop, announced = threading.Event(), threading.Event()
    threading.Thread(
        target=announce_when_ready, args=(a.host, a.port, a.workers, ready_dir, stop, announced), daemon=True
    ).start()
    try:
        uvicorn.run(
            "verify_service:app",
            app_dir=HERE,
            host=a.host,
            port=a.port,
            workers=a.workers,
            access_log=a.access_log,
            log_level="info",
        )
    finally:
        stop.set()
        shutil.rmtree(ready_dir, ignore_errors=True)
    if not announced.is_set():
        # uvicorn's parent returns normally when a worker fails its start-up.
        sys.exit("verify_service: stopped before it was ready (see the log above)")


if __name__ == "__main__":
    main()
