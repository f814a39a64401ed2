#!/usr/bin/env bash
# Fill .gpu_site/ (git-ignored through .git/info/exclude) with the Python packages bench/gpu.sh needs that the GPU
# machine's image lacks: the model packages and their pure-Python dependencies, copied from this machine's
# environment ($PYTHON, default .venv/bin/python), and pycocotools (sam3 imports it; compiled) as the CPython 3.12
# manylinux wheel, which needs pip to reach its index once. bench/gpu.sh puts .gpu_site/ on PYTHONPATH; name it
# in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
SRC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf .gpu_site
mkdir -p .gpu_site
for pkg in segment_anything sam2 sam3 fvcore iopath yacs hydra omegaconf antlr4 ftfy wcwidth termcolor; do
  cp -r "$SRC/$pkg" .gpu_site/
done
find .gpu_site -name __pycache__ -prune -exec rm -rf {} +
WHEELS=$(mktemp -d)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$WHEELS" pycocotools==2.0.11
"$PY" -m zipfile -e "$WHEELS"/pycocotools-*.whl .gpu_site/
rm -rf "$WHEELS"
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qx '/.gpu_site/' "$EXCLUDE" 2>/dev/null || echo '/.gpu_site/' >>"$EXCLUDE"
du -sh .gpu_site
