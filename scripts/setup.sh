#!/usr/bin/env bash
# Install nnshift and its dev tools. Keeps an existing torch (e.g. a CUDA build);
# with no torch present, installs the CPU wheel torch==2.13.0 first so that pip does not
# pull a multi-GB CUDA build as a dependency of nnsight.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[dev]"
