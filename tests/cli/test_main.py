"""`thinkgate serve`'s flags are built from Settings' fields (each option declared once, in
app/core/config.py): every field is a flag, and every flag the command took before is still taken,
spelled and typed as it was."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from app.cli import main as cli
from app.cli.main import build_parser, settings_from_args
from app.core.config import Settings

UPSTREAM = ["--upstream", "http://127.0.0.1:9"]

# Every flag of `serve` from before its flags came from Settings (#18), a value, and the setting it gives.
FLAGS: list[tuple[list[str], str, Any]] = [
    (["--host", "127.0.0.2"], "host", "127.0.0.2"),
    (["--port", "8123"], "port", 8123),
    (["--upstream", "http://a:1/", "--upstream", "http://b:2"], "upstreams", ["http://a:1", "http://b:2"]),
    (["--database-url", "sqlite:///x.db"], "database_url", "sqlite:///x.db"),
    (["--models-dir", "/opt/models"], "models_dir", Path("/opt/models")),
    (["--model", "qwen3"], "model", "qwen3"),
    (["--no-auth"], "no_auth", True),
    (["--no-api-docs"], "api_docs", False),
    (["--instance-id", "gw-1"], "instance_id", "gw-1"),
    (["--max-request-bytes", "4096"], "max_request_bytes", 4096),
    (["--max-image-bytes", "2048"], "max_image_bytes", 2048),
    (["--max-image-pixels", "100"], "max_image_pixels", 100),
    (["--max-images-per-request", "2"], "max_images_per_request", 2),
    (["--image-url-allowlist", "a.example", "--image-url-allowlist", "*.b.example"],
     "image_url_allowlist", ["a.example", "*.b.example"]),
    (["--upstream-timeout-s", "30"], "upstream_timeout_s", 30.0),
    (["--upstream-header-timeout-s", "7.5"], "upstream_header_timeout_s", 7.5),
    (["--health-interval-s", "2"], "health_interval_s", 2.0),
    (["--no-affinity"], "affinity", False),
    (["--checkpoint-interval-s", "0.5"], "checkpoint_interval_s", 0.5),
    (["--no-metering"], "metering", False),
    (["--prices-file", "prices.toml"], "prices_file", Path("prices.toml")),
    (["--engine-port", "18200"], "engine_port", 18200),
    (["--engine-startup-timeout-s", "60"], "engine_startup_timeout_s", 60.0),
    (["--engine-log", "/tmp/engine.log"], "engine_log", Path("/tmp/engine.log")),
    (["--engine-kv-cache-gib", "4"], "engine_kv_cache_gib", 4),
    (["--admin-key", "s3cret"], "admin_key", "s3cret"),
]  # fmt: skip


def serve(*flags: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *UPSTREAM, *flags]))


@pytest.mark.parametrize(("flags", "field", "value"), FLAGS, ids=[f[0][0] for f in FLAGS])
def test_every_flag_serve_took_is_still_taken(flags: list[str], field: str, value: Any) -> None:
    given = (
        settings_from_args(build_parser().parse_args(["serve", *flags]))
        if field == "upstreams"
        else serve(*flags)
    )
    assert getattr(given, field) == value


def test_every_setting_is_a_serve_flag_with_its_help() -> None:
    serve_parser = next(
        action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
    ).choices["serve"]
    flags = {action.dest: action for action in serve_parser._actions if action.dest != "help"}
    assert set(flags) == set(Settings.model_fields)
    for name, action in flags.items():
        assert action.help, f"--{name} has no help: give its Settings field a description"


def test_a_flag_not_given_leaves_the_environment_and_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKGATE_HEALTH_INTERVAL_S", "3")
    settings = serve()
    assert settings.health_interval_s == 3.0 and settings.port == 8000 and settings.affinity
    assert serve("--health-interval-s", "4").health_interval_s == 4.0  # the command line wins


def test_wrong_values_are_refused_by_the_parser_or_the_settings() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "eighty"])
    with pytest.raises(ValueError, match="port"):
        serve("--port", "70000")
    with pytest.raises(ValueError, match="stale_after_s"):
        serve("--heartbeat-interval-s", "30", "--stale-after-s", "20")


def test_the_database_url_is_a_flag_of_every_command() -> None:
    args = build_parser().parse_args(["--database-url", "sqlite:///k.db", "keys", "list"])
    assert settings_from_args(args).database_url == "sqlite:///k.db"


def test_a_deprecated_flag_warns_and_still_works(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[Settings] = []
    monkeypatch.setattr(cli, "_serve", served.append)
    cli.main(["serve", *UPSTREAM, "--admin-key", "s3cret"])
    assert served[0].admin_key == "s3cret"
    assert "--admin-key is deprecated" in capsys.readouterr().err
    cli.main(["serve", *UPSTREAM])
    assert "deprecated" not in capsys.readouterr().err
