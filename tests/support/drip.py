"""A loopback peer that drips a fixed answer one byte at a time: what a
slow middlebox does to a client with per-read timeouts. Used against
keyd's HTTP, Vault and SMTP clients (the test issuer has its own "drip"
mode for the real token endpoint)."""

from __future__ import annotations

import socket
import threading

HTTP_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n" + b" " * 398 + b"{}"
)
SMTP_GREETING = b"220 " + b"x" * 300 + b" ESMTP slow\r\n"


class Dripper:
    """Accepts one connection, reads the request (unless ``greets``: an
    SMTP server speaks first), then sends ``answer`` one byte per
    ``pause`` seconds. ``finished``: the whole answer went out; ``hung_up``:
    the client closed the connection first."""

    def __init__(self, answer: bytes, *, pause: float = 0.1, greets: bool = False) -> None:
        self.answer, self.pause, self.greets = answer, pause, greets
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.hung_up = threading.Event()
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            if not self.greets:
                conn.recv(65536)
            try:
                for i in range(len(self.answer)):
                    if self._stop.wait(self.pause):
                        return
                    conn.sendall(self.answer[i : i + 1])
            except OSError:
                self.hung_up.set()
                return
            self.finished.set()

    def __enter__(self) -> Dripper:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)
