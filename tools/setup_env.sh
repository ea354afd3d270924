#!/usr/bin/env bash
# Create (or reuse, when healthy) the project's pinned environment in .venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
healthy() {
  [ -x .venv/bin/python ] && .venv/bin/python - <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
want = {"bpy": "4.5.15", "torch": "2.13.0", "opencv-python-headless": "4.11.0.86", "yuface": "2023.5.1"}
for k, v in want.items():
    if not md.version(k).startswith(v):
        sys.exit(1)
import numpy, cv2, safetensors, scipy, matplotlib, skimage, pytest, tqdm  # noqa
sys.exit(0 if numpy.__version__.startswith("1.") else 1)
PYEOF
}
if healthy; then
  echo "[setup] reusing healthy .venv"
  exit 0
fi
echo "[setup] creating .venv (bpy wheel is ~373 MB; a few minutes)"
rm -rf .venv
"$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r requirements.txt -c constraints.txt
healthy || { echo "[setup] environment check failed" >&2; exit 1; }
echo "[setup] .venv ready"
