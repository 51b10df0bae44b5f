"""The listening socket and the process around the app: uvicorn, signals, the graceful stop.

The socket is bound here, before uvicorn starts, so ``--port 0`` can be
announced and a busy port is a one-line error. SIGTERM/SIGINT stop accepting,
close idle connections, let requests under way finish for up to ``grace_s``
seconds and then cut them; the process then returns normally (exit 0), where
uvicorn's own signal handling would re-raise the signal. A second SIGINT
stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import signal
import socket
import sys
from collections.abc import Callable, Collection, Iterator
from typing import Any

import uvicorn

from agent_queue.errors import AQError
from coordinator_stub.web.options import ACCEPT_BURST, LISTEN_QUEUE, ServeOptions, connection_bound
from coordinator_stub.web.protocol import protocol_class

log = logging.getLogger(__name__)


IdleHook = Callable[[bool], bool]  # (the loop is about to wait) -> it did work: the loop has callbacks to run


class IdleHookSelector(selectors.DefaultSelector):  # (per platform: epoll, kqueue)
    """The event loop's selector, calling ``hook`` before each poll: ``idle`` when the loop would wait for I/O.

    asyncio polls with a zero timeout while callbacks are ready, so a poll that may
    wait means every request read so far has been handled: the moment to sync them
    all at once (``StoreRunner.idle_hook``). When the hook did work, the poll does not wait.
    """

    def __init__(self, hook: IdleHook) -> None:
        super().__init__()
        self.hook = hook

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.hook(timeout is None or timeout > 0):
            timeout = 0
        return super().select(timeout)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, idle: IdleHook | None = None) -> None:
        super().__init__(config)
        self.idle = idle

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        if self.idle is None:
            super().run(sockets)
            return
        hook = self.idle
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(IdleHookSelector(hook))) as runner:
            runner.run(self.serve(sockets=sockets))

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # asyncio listened with ACCEPT_BURST, which is also how many it accepts per wake-up: small, so
        # descriptors never run ahead of the connection bound. The kernel's queue may be long again.
        for sock in sockets or []:
            sock.listen(LISTEN_QUEUE)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopping = getattr(self.config.app, "stopping", None)  # held claims (ServeApp) answer before the wait
        if stopping is not None:
            stopping()
        await super().shutdown(sockets)
        for conn in list(self.server_state.connections):  # cut after the grace: nothing is left half-open
            conn.transport.abort()


class OpenConnections:
    """How many connections the server has open (uvicorn's own set, once it runs): read by the store runner
    and /metrics, on the loop's thread."""

    def __init__(self) -> None:
        self._open: Collection[object] = ()

    def watch(self, connections: Collection[object]) -> None:
        self._open = connections

    @property
    def count(self) -> int:
        return len(self._open)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (IPv6 when the host says so); an AQError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted sockets only when the listener's proto says TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_QUEUE)
    except OSError as exc:
        sock.close()
        raise AQError(f"serve: cannot listen on {host}:{port} ({exc.strerror})") from exc
    sock.setblocking(False)
    return sock


def fd_limit() -> int:
    """The soft descriptor limit, raised to the hard one first (connections need descriptors)."""
    try:
        import resource
    except ImportError:  # not POSIX: no such limit to read
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if sys.platform == "darwin":
        wanted = min(wanted, 10240)  # OPEN_MAX: macOS refuses more for setrlimit
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 16


def run(app: Any, options: ServeOptions, announce: Callable[[str], None] | None = None,
        open_connections: OpenConnections | None = None, idle: IdleHook | None = None) -> None:
    """Serve ``app`` until SIGTERM/SIGINT and the graceful stop are over; ``open_connections``: kept counted;
    ``idle``: called by the event loop before each poll (``IdleHookSelector``)."""
    sock = bind(options.host, options.port)
    bound = connection_bound(options.max_connections, fd_limit())
    host, port = sock.getsockname()[:2]
    if announce is not None:
        announce(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    log.info("serving on %s:%d: at most %d connections, head %gs, body %gs, keep-alive %gs, grace %gs",
             host, port, bound, options.header_timeout_s, options.body_timeout_s, options.keep_alive_s,
             options.grace_s)
    if not options.access_log:  # uvicorn's start/stop chatter; its warnings and errors still show
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    config = uvicorn.Config(
        app, http=protocol_class(options, bound), loop="asyncio", lifespan="on", log_config=None,
        access_log=options.access_log, proxy_headers=False, backlog=ACCEPT_BURST, server_header=False, date_header=True,
        headers=[("server", "coordinator-stub")], timeout_keep_alive=options.keep_alive_s,  # type: ignore[arg-type]  # floats work: call_later
        timeout_graceful_shutdown=options.grace_s,  # type: ignore[arg-type]  # and asyncio.timeout
    )
    server = _Server(config, idle)
    if open_connections is not None:
        open_connections.watch(server.server_state.connections)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
