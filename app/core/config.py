"""Settings: one validated object, read from `THINKGATE_*` environment variables and CLI flags.

Each option is declared once, here: its type, default, bounds and help. `thinkgate serve` builds one
flag per field from it (app/cli/main.py): `--<field-name>`, a `--no-...` switch for a field that is on
by default, repeated for a list, unless the field's `Flag` says otherwise.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Flag:
    """How a setting is spelled on the command line, where that is not simply `--<field-name>`."""

    name: str | None = None  # the flag, e.g. "--upstream" (repeated) for the `upstreams` list
    metavar: str | None = None
    deprecated: str | None = None  # why, and what instead: printed as a warning when the flag is used


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

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    upstreams: Annotated[list[str], NoDecode, Flag("--upstream", metavar="URL")] = Field(
        default_factory=list,
        description="OpenAI-compatible engine base URL; repeat for replicas (comma-separated in the "
        "environment). None: the embedded engine on the bundled model.",
    )
    database_url: str = Field(
        f"sqlite+aiosqlite:///{REPO_ROOT / 'data' / 'thinkgate.db'}",
        description="SQLAlchemy URL of the database (default: a SQLite file under ./data/).",
    )
    models_dir: Path = Field(
        REPO_ROOT / "models", description="Folder with the model profiles and the bundled checkpoint."
    )
    model: str = Field("thinkgate-arith", description="Profile name of the embedded engine's model.")
    no_auth: bool = Field(False, description="No API key needed (loopback addresses only).")
    admin_key: Annotated[
        str | None,
        Flag(
            metavar="SECRET",
            deprecated="every local user sees it in `ps`. "
            "Set THINKGATE_ADMIN_KEY or use --admin-key-file PATH instead.",
        ),
    ] = Field(
        None,
        description="Secret for the admin API (keys, all usage). Give it in the environment or in "
        "a file (admin_key_file), never on the command line (`ps` shows that to every local user).",
    )
    admin_key_file: Annotated[Path | None, Flag(metavar="PATH")] = Field(
        None,
        description="File holding the admin key (a Docker or Kubernetes secret); read at start, stripped.",
    )
    instance_id: str = Field(
        "",
        description="Stable name of this gateway instance, unique among the gateways sharing a database "
        "(default: the machine's hostname and the port).",
    )
    api_docs: bool = Field(True, description="Serve /docs, /redoc and /openapi.json.")
    shutdown_grace_s: int = Field(
        15, ge=0, description="How long running requests may go on once the gateway is told to stop (s)."
    )

    # Limits
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest image, encoded.")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Most pixels of an image (from its header, before decoding)."
    )
    max_image_side: int = Field(
        4096,
        ge=1,
        description="Images are scaled down to this longest side before the engine sees them (a model's "
        "profile may ask for less).",
    )
    max_images_per_request: int = Field(8, ge=0, description="Most images in one request.")
    image_url_allowlist: Annotated[list[str], NoDecode, Flag(metavar="HOST")] = Field(
        default_factory=list,
        description="Host whose http(s) image URLs the gateway may fetch; repeat for more "
        "(comma-separated in the environment).",
    )
    image_fetch_timeout_s: float = Field(10.0, gt=0, description="Deadline of one image fetch, in all.")

    # Engines
    upstream_timeout_s: float = Field(
        600.0, gt=0, description="How long the engine may go without sending anything while it streams."
    )
    upstream_header_timeout_s: float = Field(
        60.0,
        gt=0,
        description="How long the engine may take to send a response's headers (vLLM sends them as "
        "soon as it accepts a streaming request); past it, 504 with Retry-After.",
    )
    upstream_connect_timeout_s: float = Field(
        5.0, gt=0, description="How long connecting to an engine may take before another replica is tried."
    )
    upstream_max_connections: int = Field(
        1000,
        ge=1,
        description="Most connections open at once through the shared client's pool (https engines, "
        "image fetches; plain-http engines have a transport of their own).",
    )
    upstream_max_keepalive: int = Field(
        200, ge=0, description="Most idle connections that pool keeps open for reuse."
    )
    health_interval_s: float = Field(
        5.0, gt=0, description="How often each engine replica is probed while all are healthy."
    )
    affinity: bool = Field(True, description="Send turns of one conversation to the same replica.")

    # Metering
    metering: bool = Field(True, description="Ledger, budgets and rate limits (off: only to measure them).")
    checkpoint_interval_s: float = Field(
        2.0, gt=0, description="How often a running request saves its token counts (billed if we die)."
    )
    heartbeat_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often this gateway writes its heartbeat, retries settlements the database "
        "refused, and settles the requests of gateways presumed dead.",
    )
    stale_after_s: float = Field(
        60.0,
        gt=0,
        description="A gateway whose heartbeat is older than this is presumed dead: its open requests "
        "are settled as interrupted from their last checkpoint.",
    )
    ledger_spool: Path | None = Field(
        None,
        description="File where settlements the database still refuses at shutdown wait for the next "
        "start (default: beside the SQLite file, or in data/, named after the instance id).",
    )
    prices_file: Path | None = Field(
        None, description="TOML of price overrides: [profile.long] answer_output = micro-USD per 1M tokens."
    )

    thinking_signing_keys: Annotated[
        list[str], NoDecode, Flag("--thinking-signing-key", metavar="SECRET")
    ] = Field(
        default_factory=list,
        description="Keys of the HMAC that signs thinking blocks (Messages API); the first signs, all "
        "verify (rotation); comma-separated in the environment (THINKGATE_THINKING_SIGNING_KEYS). "
        "None: one generated and kept in the data folder.",
    )

    responses_retention_days: float = Field(
        30, gt=0, le=3650, description="How long a stored Responses API response is kept (store: true)."
    )
    responses_encryption_keys: Annotated[
        list[str], NoDecode, Flag("--responses-encryption-key", metavar="SECRET")
    ] = Field(
        default_factory=list,
        description="Keys that seal reasoning for Responses API clients (include: "
        "reasoning.encrypted_content; AES-256-GCM); the first seals, all open (rotation); "
        "comma-separated in the environment (THINKGATE_RESPONSES_ENCRYPTION_KEYS). None: one generated "
        "and kept in the data folder.",
    )

    # Embedded engine
    engine_port: int = Field(0, ge=0, le=65535, description="Port of the embedded engine (0: a free one).")
    engine_startup_timeout_s: float = Field(
        900.0, gt=0, description="How long the embedded engine may take to load before it is started again."
    )
    engine_log: Path = Field(REPO_ROOT / "data" / "engine.log", description="The embedded engine's log.")
    engine_kv_cache_gib: int = Field(
        2,
        ge=1,
        description="KV cache of the embedded CPU engine, in GiB (unless VLLM_CPU_KVCACHE_SPACE is set).",
    )

    @field_validator(
        "upstreams",
        "image_url_allowlist",
        "thinking_signing_keys",
        "responses_encryption_keys",
        mode="before",
    )
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
    def _heartbeats_before_staleness(self) -> Settings:
        if self.stale_after_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s:g}) must be longer than heartbeat_interval_s "
                f"({self.heartbeat_interval_s:g}): a live gateway would be taken for a dead one"
            )
        return self

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
