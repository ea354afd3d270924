#!/usr/bin/env bash
# README command 2: set up the environment if needed, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
