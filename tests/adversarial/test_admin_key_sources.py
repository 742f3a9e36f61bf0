"""Item 12: the admin key must not be on the command line, where `ps` shows it to every local user.

It comes from `THINKGATE_ADMIN_KEY` or from a file (`--admin-key-file`, `THINKGATE_ADMIN_KEY_FILE`:
a Docker or Kubernetes secret); `--admin-key` still works but warns.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from app.cli.main import build_parser, settings_from_args
from tests.support import ROOT, THINKGATE, GatewayProcess, free_port, start_gateway

SECRET = "tg-admin-" + "f00d" * 8


def admin_status(gateway: GatewayProcess, secret: str) -> int:
    response = httpx.get(
        f"{gateway.base_url}/v1/admin/keys", headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )
    return response.status_code


def cmdline(gateway: GatewayProcess) -> str:
    return Path(f"/proc/{gateway.process.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.slow
def test_the_admin_key_from_a_file_works_and_stays_out_of_ps(tmp_path: Path) -> None:
    key_file = tmp_path / "admin-key"
    key_file.write_text(SECRET + "\n")  # as `echo` or a Kubernetes secret leave it: stripped
    key_file.chmod(0o600)
    dead = f"http://127.0.0.1:{free_port()}"
    # An empty THINKGATE_ADMIN_KEY: the file is the only source.
    with start_gateway(tmp_path, upstreams=[dead], wait_ready=False, env={"THINKGATE_ADMIN_KEY": ""},
                       args=("--admin-key-file", str(key_file))) as gateway:  # fmt: skip
        assert admin_status(gateway, SECRET) == 200
        assert admin_status(gateway, SECRET + "x") == 401
        assert SECRET not in cmdline(gateway)
        assert "deprecated" not in gateway.log()


@pytest.mark.slow
def test_the_admin_key_file_can_be_named_in_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "admin-key"
    key_file.write_text(SECRET)
    env = {"THINKGATE_ADMIN_KEY": "", "THINKGATE_ADMIN_KEY_FILE": str(key_file)}
    with start_gateway(
        tmp_path, upstreams=[f"http://127.0.0.1:{free_port()}"], wait_ready=False, env=env
    ) as gateway:
        assert admin_status(gateway, SECRET) == 200


@pytest.mark.slow
def test_the_admin_key_from_the_environment_works_and_stays_out_of_ps(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with start_gateway(tmp_path, upstreams=[dead], wait_ready=False, admin_key=SECRET) as gateway:
        assert admin_status(gateway, SECRET) == 200
        assert SECRET not in cmdline(gateway)


@pytest.mark.slow
def test_the_admin_key_flag_still_works_but_warns(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with start_gateway(tmp_path, upstreams=[dead], wait_ready=False, env={"THINKGATE_ADMIN_KEY": ""},
                       args=("--admin-key", SECRET)) as gateway:  # fmt: skip
        assert admin_status(gateway, SECRET) == 200
        log = gateway.log()
    assert "--admin-key is deprecated" in log and "THINKGATE_ADMIN_KEY" in log and "--admin-key-file" in log
    assert SECRET not in log


@pytest.mark.parametrize("contents", ["", " \n"])
def test_an_empty_admin_key_file_is_refused(tmp_path: Path, contents: str) -> None:
    key_file = tmp_path / "admin-key"
    key_file.write_text(contents)
    with pytest.raises(ValueError, match=r"admin key file .* is empty"):
        settings_from_args(build_parser().parse_args(["serve", "--admin-key-file", str(key_file)]))


@pytest.mark.slow
def test_a_missing_admin_key_file_stops_the_gateway_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [*THINKGATE, "serve", "--upstream", "http://127.0.0.1:9", "--admin-key-file", str(tmp_path / "nope")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "admin key file" in result.stderr and "nope" in result.stderr


def test_two_sources_of_the_admin_key_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "admin-key"
    key_file.write_text(SECRET)
    monkeypatch.setenv("THINKGATE_ADMIN_KEY", "another")
    with pytest.raises(ValueError, match="both"):
        settings_from_args(build_parser().parse_args(["serve", "--admin-key-file", str(key_file)]))
