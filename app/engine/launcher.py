"""The embedded engine: a supervised vLLM OpenAI server subprocess on the bundled model.

It runs in its own process group on a free loopback port, logs to a file, reports progress while it
loads, is restarted with back-off when it dies, and is stopped with its whole group on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.engine.checkpoint import verify_checkpoint
from app.profiles.profile import ModelProfile

log = logging.getLogger("thinkgate.engine")

MAX_BACKOFF_S = 60.0


def _die_with_parent() -> None:
    """In the child, before exec: own process group, and SIGTERM when the gateway dies (even SIGKILL)."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def engine_command(profile: ModelProfile, model_dir: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", profile.name,
        "--host", "127.0.0.1",
        "--port", str(port),
        *profile.engine_flags(),
    ]  # fmt: skip


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 4096))
            lines = [line for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][-160:] if lines else ""


class EmbeddedEngine:
    """Starts, watches and stops one vLLM server process."""

    def __init__(
        self,
        profile: ModelProfile,
        model_dir: Path,
        *,
        port: int = 0,
        log_path: Path,
        kv_cache_gib: int = 2,
        startup_timeout_s: float = 900.0,
        command: list[str] | None = None,
    ) -> None:
        self.profile = profile
        self.model_dir = model_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.kv_cache_gib = kv_cache_gib
        self.startup_timeout_s = startup_timeout_s
        self.command = command or engine_command(profile, model_dir, self.port)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def spawn(self) -> None:
        verify_checkpoint(self.model_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            # The gateway's own settings (the admin key among them) are none of the engine's business.
            **{name: value for name, value in os.environ.items() if not name.startswith("THINKGATE_")},
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib)),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        command = self.command
        log.info("starting engine: %s (log: %s)", " ".join(command), self.log_path)
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n=== {time.ctime()} starting: {' '.join(command)}\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
            )

    async def wait_ready(self, client: httpx.AsyncClient) -> None:
        """Poll until the engine answers, printing progress; raise if it dies or times out."""
        started = time.monotonic()
        next_report = 0.0
        while True:
            elapsed = time.monotonic() - started
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process else None
                raise RuntimeError(f"engine exited with code {code} while starting; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.url}/v1/models", timeout=2.0)).status_code == 200:
                    log.info("engine ready after %.0f s on %s", elapsed, self.url)
                    return
            if elapsed > self.startup_timeout_s:
                raise TimeoutError(f"engine not ready after {elapsed:.0f} s; see {self.log_path}")
            if elapsed >= next_report:
                log.info("engine loading… %3.0f s  %s", elapsed, _last_line(self.log_path))
                next_report = elapsed + 10
            await asyncio.sleep(0.5)

    async def run(self, client: httpx.AsyncClient) -> None:
        """Start the engine and keep it running; restarts it with exponential back-off if it dies."""
        backoff = 1.0
        while not self._stopping:
            self.spawn()
            try:
                await self.wait_ready(client)
                backoff = 1.0
                while self.process is not None and self.process.poll() is None:
                    await asyncio.sleep(1.0)
                if self._stopping:
                    return
                log.error(
                    "engine exited with code %s; see %s",
                    self.process and self.process.returncode,
                    self.log_path,
                )
            except (RuntimeError, TimeoutError) as exc:
                log.error("%s", exc)
                self.terminate()
            self.restarts += 1
            log.warning("restarting engine in %.0f s (restart #%d)", backoff, self.restarts)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def start(self, client: httpx.AsyncClient) -> None:
        self._task = asyncio.create_task(self.run(client), name="thinkgate-embedded-engine")

    def terminate(self, grace_s: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after the grace period."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Children (engine core workers) may outlive the leader briefly; the group kill reaches them.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.terminate)
