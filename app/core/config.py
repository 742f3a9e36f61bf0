"""Settings: one validated object, read from `THINKGATE_*` environment variables and CLI flags."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything the gateway can be told; each field is also a `thinkgate serve` flag."""

    model_config = SettingsConfigDict(env_prefix="THINKGATE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="OpenAI-compatible engine base URLs (comma-separated in the environment). "
        "Empty: start the embedded engine on the bundled model.",
    )
    database_url: str = f"sqlite+aiosqlite:///{REPO_ROOT / 'data' / 'thinkgate.db'}"
    models_dir: Path = REPO_ROOT / "models"
    model: str = Field("thinkgate-arith", description="Profile name of the embedded engine's model.")
    no_auth: bool = False
    admin_key: str | None = Field(
        None,
        description="Secret for the admin API (keys, all usage). Give it in the environment or in "
        "admin_key_file, never on the command line (`ps` shows that to every local user).",
    )
    admin_key_file: Path | None = Field(
        None,
        description="File holding the admin key (a Docker or Kubernetes secret); read at start, stripped.",
    )
    instance_id: str = Field(
        "",
        description="Stable name of this gateway instance, unique among the gateways sharing a database "
        "(default: the machine's hostname and the port).",
    )
    api_docs: bool = Field(True, description="Serve /docs, /redoc and /openapi.json.")

    # Limits
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_images_per_request: int = Field(8, ge=0)
    image_url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts whose http(s) image URLs the gateway may fetch."
    )
    image_fetch_timeout_s: float = Field(10.0, gt=0)
    upstream_timeout_s: float = Field(600.0, gt=0)
    upstream_header_timeout_s: float = Field(
        60.0,
        gt=0,
        description="How long the engine may take to send a response's headers (vLLM sends them as "
        "soon as it accepts a streaming request); past it, 504 with Retry-After.",
    )
    health_interval_s: float = Field(5.0, gt=0)
    affinity: bool = Field(True, description="Send turns of one conversation to the same replica.")

    # Metering
    metering: bool = Field(True, description="Ledger, budgets and rate limits (off: only to measure them).")
    checkpoint_interval_s: float = Field(
        2.0, gt=0, description="How often a running request saves its token counts (billed if we die)."
    )
    ledger_spool: Path | None = Field(
        None,
        description="File where settlements the database still refuses at shutdown wait for the next "
        "start (default: beside the SQLite file, or in data/, named after the instance id).",
    )
    prices_file: Path | None = Field(
        None, description="TOML of price overrides: [profile.long] answer_output = micro-USD per 1M tokens."
    )

    # Embedded engine
    engine_port: int = Field(0, ge=0, le=65535, description="0: a free loopback port.")
    engine_startup_timeout_s: float = Field(900.0, gt=0)
    engine_log: Path = REPO_ROOT / "data" / "engine.log"
    engine_kv_cache_gib: int = Field(2, ge=1)

    @field_validator("upstreams", "image_url_allowlist", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("upstreams")
    @classmethod
    def _strip_slash(cls, value: list[str]) -> list[str]:
        return [url.rstrip("/") for url in value]

    @model_validator(mode="after")
    def _refuse_open_no_auth(self) -> Settings:
        if self.no_auth and not _is_loopback(self.host):
            raise ValueError(
                f"--no-auth is only allowed on a loopback address, not on host {self.host!r}: "
                "anyone on the network could spend the budget"
            )
        if not self.instance_id:
            # Not the bind address: every container of a scaled service binds 0.0.0.0:8000, and a
            # gateway reconciles its own id's open requests as interrupted when it starts.
            self.instance_id = f"{socket.gethostname()}:{self.port}"
        return self

    @model_validator(mode="after")
    def _read_admin_key_file(self) -> Settings:
        if not self.admin_key:
            self.admin_key = None
        if self.admin_key_file is None:
            return self
        if self.admin_key is not None:
            raise ValueError(
                "the admin key is given both directly (THINKGATE_ADMIN_KEY or --admin-key) and in a file "
                f"({self.admin_key_file}); give one"
            )
        try:
            secret = self.admin_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the admin key file {self.admin_key_file}: {exc}") from None
        if not secret:
            raise ValueError(f"the admin key file {self.admin_key_file} is empty")
        self.admin_key = secret
        return self

    @property
    def embedded_engine(self) -> bool:
        return not self.upstreams
