#!/usr/bin/env bash
# README command 1: set up the environment if needed, then reconstruct the bundled default portrait
# (scikit-image's public-domain "astronaut") into out/astronaut.blend and out/astronaut.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec .venv/bin/python tools/demo.py "$@"
