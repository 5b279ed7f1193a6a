#!/usr/bin/env bash
# Install what the local NDIF test server needs (tests marked `ndif`, tests/test_remote.py):
#   * redis-server (and iproute2 if `ip` is missing) from Debian (apt-get; redis is NOT started here),
#   * ndif 0.1.2 with its api + ray extras (it declares Python >= 3.12 but runs on 3.11),
#   * moto[server] as the S3-compatible object store (ndif's own, rustfs, is on neither PyPI nor apt).
# Idempotent (does nothing when everything is already there) and safe for an existing environment:
# the installed torch, nnsight and transformers are pinned through a constraints file, and
# transformers stays < 5.23 (5.23 breaks nnsight 0.8.1's meta-model build).
#
#   bash scripts/ndif_setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python}"
NDIF_SPEC="ndif[api,ray]==0.1.2"

# --- Debian packages: redis-server, and iproute2 (`ip netns`: the test server runs in its own namespace) ---
apt_missing=()
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
command -v ip >/dev/null 2>&1 || apt_missing+=(iproute2)
if [ "${#apt_missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # policy-rc.d exiting 101 keeps the package's init script from starting a system-wide redis on 6379.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi
echo "redis-server: $(redis-server --version | awk '{print $3}')"

# --- Python packages ------------------------------------------------------------------------------
have_all() {
  "$PY" - <<'EOF'
import importlib.metadata as md, sys
need = {"ndif": "0.1.2", "ray": None, "fastapi": None, "gunicorn": None, "uvicorn": None,
        "python-multipart": None, "moto": None, "flask": None, "flask-cors": None, "zstandard": None}
for name, version in need.items():
    try:
        got = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(1)
    if version is not None and got != version:
        sys.exit(1)
sys.exit(0)
EOF
}

if have_all; then
  echo "ndif python packages: already installed"
else
  constraints="$(mktemp)"
  "$PY" - >"$constraints" <<'EOF'
import importlib.metadata as md
# keep whatever torch / nnsight is installed (e.g. a CUDA torch); transformers < 5.23 (nnsight 0.8.1 meta build)
for name in ("torch", "nnsight"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
print("transformers<5.23")
EOF
  # ndif 0.1.2 declares Requires-Python >= 3.12; everything it runs here works on 3.11.
  "$PY" -m pip install -q --ignore-requires-python -c "$constraints" "$NDIF_SPEC" "moto[server]>=5"
  rm -f "$constraints"
fi
"$PY" - <<'EOF'
import importlib.metadata as md
print("  ".join(f"{n} {md.version(n)}" for n in ("ndif", "nnsight", "ray", "transformers", "torch", "moto")))
EOF
