"""Running the app with uvicorn: in the foreground until SIGTERM / Ctrl-C (then draining), or on a thread."""
from __future__ import annotations

import signal
import socket
import threading
import time

import uvicorn

from ..errors import UserError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), or a one-line error when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _config(app, drain_timeout: float | None, access_log: bool) -> uvicorn.Config:
    return uvicorn.Config(app, timeout_graceful_shutdown=drain_timeout, access_log=access_log, lifespan="off",
                          log_level="info" if access_log else "warning", timeout_keep_alive=30)


def serve(app, sock: socket.socket, drain_timeout: float | None = 30.0, access_log: bool = True) -> str | None:
    """Serve on `sock` until SIGTERM or SIGINT. Then no new connection is accepted, requests in flight run to
    their end (streams included; after `drain_timeout` seconds they are cancelled), and this returns the name of
    the signal. uvicorn re-raises the signal once it has stopped; the handlers installed here receive it, so the
    process can exit normally."""
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _: caught.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(_config(app, drain_timeout, access_log)).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return signal.Signals(caught[0]).name if caught else None


class BackgroundServer:
    """The app served on a thread of this process (tests, benchmarks, notebooks):

        with BackgroundServer(app) as server:
            OpenAI(base_url=server.url + "/v1", api_key="-")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, drain_timeout: float | None = 5.0,
                 sock: socket.socket | None = None):
        self.sock = sock if sock is not None else bind(host, port)
        if sock is not None:
            sock.listen(2048)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(_config(app, drain_timeout, access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name=f"wb-serve-{self.port}")

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
