"""``katapool start``: run the pools and their endpoints until stopped.

Order of events: pidfile → pools built (queries may arrive at once and wait for a member) →
Unix socket and WebSocket/HTTP listening → members started. SIGTERM/SIGINT (or ``katapool
stop``) drain and stop; SIGHUP (or ``katapool reload``) re-reads the pool file and rolls the
members over to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from katapool import __version__
from katapool.config.poolfile import ModelSpec, PoolFile, is_loopback, load_pool_file, split_address
from katapool.engine.discovery import resolve_engine
from katapool.engine.probe import probe_version
from katapool.errors import ConfigError, KatapoolError
from katapool.pool import Pool
from katapool.pool.launch import launch_from_options
from katapool.server.hub import Hub, pool_policy
from katapool.server.metrics import Metrics
from katapool.server.state import PidLock, StateDir, daemon_token, read_pid
from katapool.server.unix_endpoint import serve_unix
from katapool.server.web_endpoint import WebEndpoint

log = logging.getLogger("katapool.daemon")


class AlreadyRunning(KatapoolError):
    pass


class Daemon:
    def __init__(self, pool_file: PoolFile, state: StateDir, *, file_path: Path | None = None,
                 regenerate: Callable[[], PoolFile] | None = None, drain_timeout: float = 60.0) -> None:
        self.file = pool_file
        self.state = state
        self.file_path = file_path
        self.regenerate = regenerate
        self.drain_timeout = drain_timeout
        self.stopping = asyncio.Event()
        self.hub: Hub | None = None
        self.socket_path: Path | None = None
        self.web_address: str | None = None
        self.token_required = False
        self._reload_lock = asyncio.Lock()
        self._next_file: PoolFile | None = None

    # --- building pools -------------------------------------------------------------------------

    def _log_dir(self) -> Path:
        path = Path(self.file.log_dir).expanduser() if self.file.log_dir else self.state.logs
        path.mkdir(parents=True, exist_ok=True)
        return path

    def build_pool(self, name: str, spec: ModelSpec) -> Pool:
        """A model's pool, not started (blocking: it probes the engine and the devices; a
        reload runs it in a worker thread)."""
        file = self._next_file or self.file  # during a reload: the file being applied
        if file.ray is not None:
            return self._build_cluster_pool(name, spec, file)
        launched = launch_from_options(
            model=spec.path, members=spec.member_count(), gpus=spec.gpus, preset=spec.preset,
            katago=file.engine, human_model=spec.human_model,
            configs=[Path(c).expanduser() for c in spec.configs],
            overrides=[f"{k}={_kv(v)}" for k, v in spec.overrides.items()],
            analysis_threads=spec.analysis_threads, start_timeout=file.policy.start_timeout,
            log_dir=self._log_dir(), log_prefix=f"{name}-")
        pool = Pool(launched.factories, pool_policy(file), version=launched.info.version,
                    git_hash=launched.info.git_revision, labels=launched.labels)
        pool.on_close(launched.cleanup)
        pool.record_sources(launched.sources)
        return pool

    def _build_cluster_pool(self, name: str, spec: ModelSpec, file: PoolFile) -> Pool:
        """Members as Ray actors; engines, networks and configs are resolved on the nodes."""
        from katapool.cluster.driver import ray_factories

        version, git_hash = "", None
        with contextlib.suppress(KatapoolError):  # the head may have no engine of its own
            info = probe_version(resolve_engine(file.engine).path)
            version, git_hash = info.version, info.git_revision
        factories = ray_factories(name, spec, file)
        return Pool(factories, pool_policy(file), version=version, git_hash=git_hash,
                    labels=["ray"] * len(factories))

    # --- running --------------------------------------------------------------------------------

    async def run(self, on_started: Callable[[Daemon], None] | None = None) -> int:
        self.state.ensure()
        lock = PidLock(self.state.pidfile)
        if not lock.acquire():
            other = read_pid(self.state.pidfile)
            raise AlreadyRunning(f"a katapool daemon is already running (pid {other}); "
                                 "`katapool stop` it first or use another --state-dir")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: _spawn(self._reload_logged()))
        hub = self.hub = Hub(self.file, self.build_pool)
        hub.control = self._control
        servers: list[Any] = []
        joined = False
        try:
            if self.file.ray is not None:
                from katapool.cluster.driver import connect

                await asyncio.to_thread(connect, self.file.ray)
                joined = True
            hub.build_all()
            servers = await self._listen(hub)
            if on_started:
                on_started(self)
            log.info("katapool %s daemon (pid %d) listening: %s", __version__, os.getpid(),
                     ", ".join(self.addresses()))
            starting = asyncio.ensure_future(hub.start())
            stopper = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # no member could start: the error ends the daemon
                log.info("ready: %s", json.dumps(hub.status()["models"]))
                await self.stopping.wait()
            else:
                starting.cancel()
            stopper.cancel()
            log.info("stopping: finishing queries in flight (up to %.0f s)", self.drain_timeout)
            hub.stopping = True  # connected clients get their answers but start nothing new
            for server in servers:
                _stop_accepting(server)
            if not await hub.drain(self.drain_timeout):
                log.warning("stopping with queries unfinished after %.0f s", self.drain_timeout)
        finally:
            for server in servers:
                server.close()
            await hub.close()
            if joined:
                from katapool.cluster.driver import disconnect

                await asyncio.to_thread(disconnect)
            if self.socket_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.socket_path.unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.state.root / "socket").unlink()
            lock.release()
        log.info("stopped")
        return 0

    async def _listen(self, hub: Hub) -> list[Any]:
        servers: list[Any] = []
        listen = self.file.listen
        self.socket_path = self.state.socket if listen.unix == "default" \
            else Path(listen.unix).expanduser()
        servers.append(await serve_unix(hub, self.socket_path))
        if listen.websocket is not None:
            host, port = split_address(listen.websocket)
            if (exposed := listen.exposure_warning()) is not None:
                log.warning("%s", exposed)
            self.token_required = listen.require_token if listen.require_token is not None \
                else not is_loopback(host)
            token = None
            if self.token_required:
                token = daemon_token(Path(listen.token_file).expanduser() if listen.token_file
                                     else None, self.state.token_file)
            endpoint = WebEndpoint(hub, Metrics(hub), token, listen.origins, listen.hosts)
            try:
                server = await endpoint.serve(host, port)
            except OSError as exc:
                raise ConfigError(f"listen.websocket {listen.websocket}: {exc.strerror}") from None
            sockets = server.sockets
            bound = sockets[0].getsockname() if sockets else (host, port)
            self.web_address = f"{bound[0]}:{bound[1]}"
            servers.append(server)
        return servers

    def addresses(self) -> list[str]:
        out = []
        if self.socket_path is not None:
            out.append(f"unix:{self.socket_path}")
        if self.web_address is not None:
            note = " (token required)" if self.token_required else ""
            out += [f"ws://{self.web_address}/{note}", f"http://{self.web_address}/healthz",
                    f"http://{self.web_address}/metrics"]
        return out

    # --- control --------------------------------------------------------------------------------

    async def _control(self, action: str, raw: dict[str, Any]) -> dict[str, Any]:
        assert self.hub is not None
        if action == "katapool_status":
            return {"action": action, "pid": os.getpid(), "version": __version__,
                    "addresses": self.addresses(), "state_dir": str(self.state.root),
                    "pool_file": str(self.file_path) if self.file_path else None,
                    "log_dir": str(self._log_dir()), **self.hub.status()}
        if action == "katapool_stop":
            asyncio.get_running_loop().call_later(0.05, self.stopping.set)
            return {"action": action, "stopping": True, "pid": os.getpid()}
        if action == "katapool_reload":
            return {"action": action, "models": await self.reload()}
        raise KatapoolError(f"unknown control action {action}")

    async def reload(self) -> dict[str, str]:
        """Re-read the pool file (a bad one changes nothing) and apply it member by member."""
        assert self.hub is not None
        async with self._reload_lock:
            if self.hub.stopping:
                raise KatapoolError("the daemon is stopping")
            # Reading (or regenerating: device discovery) the file may block: off the loop.
            if self.file_path is not None:
                new = await asyncio.to_thread(load_pool_file, self.file_path)
            elif self.regenerate is not None:
                new = await asyncio.to_thread(self.regenerate)
            else:
                new = self.file
            if new.listen != self.file.listen or new.ray != self.file.ray:
                log.warning("reload: listen settings and the Ray cluster change only on restart")
            new = new.model_copy(update={"listen": self.file.listen, "log_dir": self.file.log_dir,
                                         "ray": self.file.ray})
            self._next_file = new
            try:
                done = await self.hub.reload(new)
            finally:
                self._next_file = None
            self.file = self.hub.file
            log.info("reloaded: %s", done)
            return done

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # a signal has no caller to tell: the log does
            log.error("reload failed, still serving the previous configuration: %s", exc)


def _stop_accepting(server: Any) -> None:
    """No new connections; connected clients keep theirs until their queries are answered."""
    try:
        server.close(close_connections=False)  # websockets' server
    except TypeError:
        server.close()  # asyncio's: existing connections stay open


def _kv(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def configure_logging(log_file: Path, level: str, to_stderr: bool) -> None:
    handlers: list[logging.Handler] = [logging.FileHandler(log_file)]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=handlers, force=True)
    logging.getLogger("websockets").setLevel(logging.WARNING)
