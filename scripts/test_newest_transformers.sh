#!/usr/bin/env bash
# The model-family tests on the newest transformers (or TRANSFORMERS_SPEC, e.g. 'transformers==5.24.0'), in a
# throwaway venv outside the repository that installs only transformers and reuses torch / nnsight / peft from the
# current environment (--system-site-packages). Extra arguments go to pytest.
#   bash scripts/test_newest_transformers.sh            # newest release
#   TRANSFORMERS_SPEC='transformers==5.9.0' bash scripts/test_newest_transformers.sh -x
set -euo pipefail
cd "$(dirname "$0")/.."
SPEC="${TRANSFORMERS_SPEC:-transformers}"
VENV="${NNSHIFT_TF_VENV:-${TMPDIR:-/tmp}/nnshift-venv-$(echo "$SPEC" | tr -c 'A-Za-z0-9.\n' '-')}"
PY="${PYTHON:-python}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" --system-site-packages
# --upgrade with the default only-if-needed strategy: transformers (and a dependency only where the installed one
# is too old for it) goes into the venv; torch and nnsight stay the system's
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$SPEC"
"$VENV/bin/python" - <<'PY'
import nnsight, torch, transformers
print(f"transformers {transformers.__version__} ({transformers.__file__})")
print(f"torch {torch.__version__}, nnsight {nnsight.__version__}")
PY
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_models_llava.py tests/test_models_families.py tests/test_models_registry.py \
    tests/test_models_lora.py tests/test_models_lora_matrix.py tests/test_models_load_errors.py "$@"
