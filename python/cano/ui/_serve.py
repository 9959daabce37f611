"""Serving the UI with uvicorn: on a socket bound here (a taken port is a clear error, not
uvicorn's exit), without touching the process's signal handlers (its owner — ``cano ui``
or a Worker — decides what SIGINT means)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import Generator, Iterable
from typing import Any

import uvicorn

from cano.errors import ConfigurationError
from cano.ui._app import LOOPBACK_HOSTS, create_app
from cano.workflow import Workflow

__all__ = ["UiServer", "check_host"]

_log = logging.getLogger("cano.ui")
MIN_TOKEN = 16


def check_host(host: str, *, allow_remote: bool, token: str | None) -> list[str]:
    """The ``Host`` names to serve when binding ``host``: the loopback names, or any (``*``)
    for a non-loopback address — which needs ``allow_remote`` and a token of at least 16
    characters, else a :class:`cano.ConfigurationError` says what to pass."""
    if _is_loopback(host):
        return list(LOOPBACK_HOSTS)
    if not allow_remote:
        raise ConfigurationError(
            f"cano ui: {host} is not a loopback address: serving other machines needs "
            "--allow-remote and a token in CANO_UI_TOKEN"
        )
    if not token or len(token) < MIN_TOKEN:
        raise ConfigurationError(
            f"cano ui: --allow-remote needs a token of at least {MIN_TOKEN} characters in "
            "CANO_UI_TOKEN (every request must carry it)"
        )
    return ["*"]


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class UiServer:
    """The UI of one store on ``host:port`` (port 0: any free port; see :attr:`url`)."""

    def __init__(
        self,
        store_or_client: object,
        *,
        workflows: Iterable[Workflow[Any]] = (),
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str | None = None,
        allow_remote: bool = False,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(f"cano ui: port must be 0 to 65535, got {port!r:.40}")
        hosts = check_host(host, allow_remote=allow_remote, token=token)
        self.app = create_app(
            store_or_client, workflows=workflows, token=token or None, allowed_hosts=hosts
        )
        self._host = host.strip("[]")
        self._port = port
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def listen(self) -> None:
        """Binds the socket now: a port in use is a :class:`cano.ConfigurationError`."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if sys.platform == "win32":  # there SO_REUSEADDR would share a port in use
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:  # rebind at once after a restart (TIME_WAIT); a port in use still fails
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as err:
            sock.close()
            raise ConfigurationError(
                f"cano ui: cannot listen on {self._host}:{self._port}: {err.strerror or err}"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` (the port actually bound)."""
        if self._socket is None:
            raise RuntimeError("UiServer.url: call listen() first")
        host, port = self._socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def start(self) -> None:
        """Serves in the background on the running loop (binding first if needed)."""
        if self._task is not None:
            return
        if self._socket is None:
            self.listen()
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", timeout_notify=5
        )
        self._server = _Server(config)
        assert self._socket is not None
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self._socket])
        )
        _log.info("cano ui on %s", self.url)

    async def stop(self) -> None:
        """Stops serving: open connections get a moment to finish."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            if not self._task.done():
                self._task.cancel()
            self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def serve(self) -> None:
        """Serves until :meth:`stop` (or the server fails)."""
        self.start()
        assert self._task is not None
        await asyncio.shield(self._task)
