#!/usr/bin/env bash
# The GPU table of issue 18 on one GPU (about 8 minutes on an H200; bench/RESULTS.md says how to read it):
# SAM ViT-L, SAM 2.1 Hiera-L and SAM 3 at 1024² (SAM 3 1008²), bf16, batch 1 and 8, dense vs ToMe r = 0.5 in
# the attn / block / span scopes, against eager, SDPA and compiled (span only) dense baselines, peak memory,
# and torch.profiler tables of a dense and a span forward per model.
#
#   bash bench/gpu.sh                       # from anywhere; extra arguments go to bench/gpu_table.py
#   bash bench/gpu.sh --device cpu --models sam_tiny,sam2_tiny,sam3_tiny --repeats 1 --warmup 0   # smoke run
#
# Rows: JSON lines in $OUT/gpu.jsonl when OUT is set (the device tool's folder), else outputs/bench/gpu.jsonl;
# the log beside them. The repository runs from its folders (no install needed); packages the machine lacks
# (segment_anything, sam2, sam3, fvcore, hydra-core, pycocotools, ...) come from .gpu_site/ where the Python lacks
# them: `bash bench/gpu_site.sh` fills it here, and the device tool carries it (carry: [".gpu_site"]).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT:$ROOT/plugins:$ROOT/adapters:$ROOT/eval${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import segment_anything, sam2, sam3, fvcore, hydra, pycocotools.mask" 2>/dev/null; then
  [ -d "$ROOT/.gpu_site" ] || { echo "missing packages and no .gpu_site/: run bash bench/gpu_site.sh, carry .gpu_site" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$ROOT/.gpu_site"
fi
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1
DIR="${OUT:-$ROOT/outputs/bench}"
mkdir -p "$DIR"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
set -o pipefail
"$PY" bench/gpu_table.py --out "$DIR/gpu.jsonl" --profile "$@" 2>&1 | tee "$DIR/gpu.log"
