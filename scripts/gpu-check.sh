#!/usr/bin/env bash
# Verifies the CUDA backend on a GPU machine in a few minutes, from a
# release `compare` built elsewhere and the fetched models and photos:
#
#   bash scripts/gpu-check.sh [COMPARE_BINARY]    # default target/release/compare
#
# It finds the CUDA 13 libraries (pip's nvidia-* wheels, under
# site-packages/nvidia/cu13/lib and site-packages/nvidia/cudnn/lib, or a
# system CUDA under /usr/local/cuda), then prints one JSON object:
#   - parity: the CUDA backend against the CPU (ONNX Runtime, else tract) on
#     the 55 labelled photos: the lowest cosine between the two embeddings
#     of a face (must be >= 0.9999) and the verdicts of the 1,485 pairs
#     (must all agree);
#   - bare_model: faces/s of the model alone at batch 1, 32, 64, 128, 256,
#     and the same on ONNX Runtime pinned to 2 cores for the ratio;
#   - nodes_on_cpu: the model's nodes that tract's CUDA runtime left on the
#     CPU (empty when every node runs on the GPU);
#   - pipeline: `compare --pairs --no-dedup` end to end on the GPU, with
#     its per-stage timings;
#   - detector: the face detector on the GPU (`compare detector-check`):
#     frames/s at 1, 8 and 32 frames a run, and the faces it finds in runs
#     of 32 against the CPU's one frame a run on the group and labelled
#     photos (boxes within a pixel, scores within 1e-3).
# Exit status 0 only when both parities hold.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-target/release/compare}
assets=${FACEPOOL_ASSETS:-assets}
[ -x "$bin" ] || { echo "gpu-check: no $bin (cargo build --release --bin compare)" >&2; exit 2; }
[ -f "$assets/models/fr_feature.onnx" ] || { echo "gpu-check: no models under $assets (bash scripts/fetch-assets.sh)" >&2; exit 2; }

# The CUDA libraries: pip's wheels first, then a system CUDA.
libs=()
cuda_home=${CUDA_HOME:-}
if command -v python3 >/dev/null; then
    while IFS= read -r d; do
        [ -n "$d" ] && libs+=("$d")
    done < <(python3 - <<'EOF' 2>/dev/null || true
import importlib.util, os
spec = importlib.util.find_spec("nvidia")
roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
for root in roots:
    for sub in ("cu13/lib", "cudnn/lib", "cublas/lib", "cuda_runtime/lib", "cuda_nvrtc/lib"):
        d = os.path.join(root, sub)
        if os.path.isdir(d):
            print(d)
    if os.path.isdir(os.path.join(root, "cu13", "include")):
        print("CUDA_HOME=" + os.path.join(root, "cu13"))
EOF
    )
fi
ld=()
for d in "${libs[@]}"; do
    case $d in
        CUDA_HOME=*) [ -z "$cuda_home" ] && cuda_home=${d#CUDA_HOME=} ;;
        *) ld+=("$d") ;;
    esac
done
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && ld+=("$d")
done
if [ -z "$cuda_home" ] && [ -d /usr/local/cuda/include ]; then
    cuda_home=/usr/local/cuda
fi
LD_LIBRARY_PATH=$(IFS=:; echo "${ld[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
[ -n "$cuda_home" ] && export CUDA_HOME=$cuda_home
echo "gpu-check: LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2
echo "gpu-check: CUDA_HOME=${CUDA_HOME:-unset}" >&2
command -v nvidia-smi >/dev/null && nvidia-smi -L >&2 || true

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The CPU side to compare with: ONNX Runtime when its library is there.
against=ort
[ -f "$assets/lib/libonnxruntime.so.1" ] || against=tract

# Parity and the bare model on the GPU (TRACT_CUDA_TRANSLATE_DEBUG lists
# every node the runtime could not translate).
TRACT_CUDA_TRANSLATE_DEBUG=1 "$bin" model-check --assets "$assets" --backend cuda --against "$against" \
    --batches 1,32,64,128,256 --seconds 3 >"$out/gpu.json" 2>"$out/gpu.err" || {
    cat "$out/gpu.err" >&2
    exit 1
}
grep -h "cuda-translate-fallback" "$out/gpu.err" >&2 || true

# The 2-core CPU figure, measured here: ONNX Runtime, two intra-op threads.
cpu_cores=$(nproc)
taskset -c 0,1 "$bin" model-check --assets "$assets" --backend "$against" --against "$against" \
    --intra-threads 2 --batches 4,64 --seconds 3 >"$out/cpu.json" 2>"$out/cpu.err" || cat "$out/cpu.err" >&2

# The detector on the GPU, several frames a run, against the CPU's.
"$bin" detector-check --assets "$assets" --backend cuda --against "$against" \
    --batches 1,8,32 --seconds 3 >"$out/detector.json" 2>"$out/detector.err" || cat "$out/detector.err" >&2

# The pipeline end to end on the GPU, every image embedded.
"$bin" --assets "$assets" --backend cuda --pairs "$assets/photos/johns/pairs.csv" --no-dedup --json \
    >"$out/pairs.jsonl" 2>"$out/pairs.err" || { cat "$out/pairs.err" >&2; exit 1; }

python3 - "$out" "$cpu_cores" <<'EOF'
import json, sys
out, cores = sys.argv[1], int(sys.argv[2])
gpu = json.load(open(f"{out}/gpu.json"))
try:
    cpu = json.load(open(f"{out}/cpu.json"))
except Exception as e:
    cpu = {"error": str(e)}
try:
    detector = json.load(open(f"{out}/detector.json"))
except Exception as e:
    detector = {"error": str(e)}
lines = [json.loads(l) for l in open(f"{out}/pairs.jsonl") if l.strip()]
summary = lines[-1].get("summary", lines[-1])
rates = {r["batch"]: r["faces_per_s"] for r in gpu["bare_model"]}
cpu_rate = max((r["faces_per_s"] for r in cpu.get("bare_model", [])), default=None)
report = {
    "machine_cores": cores,
    "parity": gpu["parity"],
    "parity_ok": gpu["parity"]["faces_below_0_9999"] == 0 and gpu["parity"]["verdicts_differing"] == 0,
    "bare_model_gpu": gpu["bare_model"],
    "bare_model_cpu_2_cores": cpu.get("bare_model", cpu),
    "gpu_over_cpu_at_64": (round(rates[64] / cpu_rate, 1) if cpu_rate and 64 in rates else None),
    "nodes_on_cpu": gpu["nodes_on_cpu"],
    "backend": gpu["backend_detail"],
    "pipeline_faces_per_s": (round(summary["images_embedded"] / summary["seconds"], 1)
                             if summary.get("seconds") else None),
    "pipeline": summary,
    "detector": detector,
    "detector_parity_ok": not detector.get("parity", {"frames_differing": [None]})["frames_differing"],
}
print(json.dumps(report, indent=2))
sys.exit(0 if report["parity_ok"] and report["detector_parity_ok"] else 1)
EOF
