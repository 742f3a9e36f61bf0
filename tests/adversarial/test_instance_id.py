"""Item 13: two gateways must never share an instance id.

A restarting gateway reconciles the open requests of its own instance id as `interrupted` at once
(app/pipeline/gateway.py: Gateway.start). With the bind address as the default id, two containers of
`docker compose up --scale gateway=2` on one PostgreSQL were both `0.0.0.0:8000`: a restart of one
closed the other's live requests. The default is now the machine's hostname (a container's own
name) and the port.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from app.core.config import Settings
from tests.support import free_port, query_db, start_gateway


def test_the_default_instance_id_is_hostname_and_port() -> None:
    settings = Settings(host="0.0.0.0", port=8000, upstreams=["http://engine:8000"])
    assert settings.instance_id == f"{socket.gethostname()}:8000"


def test_two_containers_with_the_same_bind_address_get_different_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = []
    for container in ("3f9c2a1b7d10", "8e41d07c5a22"):  # what Docker sets as each container's hostname
        monkeypatch.setattr(socket, "gethostname", lambda name=container: name)
        ids.append(Settings(host="0.0.0.0", port=8000, upstreams=["http://engine:8000"]).instance_id)
    assert ids == ["3f9c2a1b7d10:8000", "8e41d07c5a22:8000"]


def test_two_gateways_on_one_machine_differ_by_port() -> None:
    first, second = (Settings(host="0.0.0.0", port=port, upstreams=["http://e:1"]) for port in (8000, 8001))
    assert first.instance_id != second.instance_id


def test_an_explicit_instance_id_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKGATE_INSTANCE_ID", "gateway-a")
    assert Settings(upstreams=["http://e:1"]).instance_id == "gateway-a"


@pytest.mark.slow
def test_a_running_gateway_registers_under_hostname_and_port(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with start_gateway(tmp_path, upstreams=[dead], wait_ready=False) as gateway:
        port = gateway.base_url.rsplit(":", 1)[1]
        rows = query_db(gateway.database_url, "SELECT id FROM instances")
    assert rows == [{"id": f"{socket.gethostname()}:{port}"}]
