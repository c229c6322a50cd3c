"""A loopback TCP proxy a test owns, for faults only a network shows.

A Redis killed on loopback resets its connections at once, so a client always learns of it. A
partition does not: packets are held or dropped, nothing says so, and a client waits on a reply
that never comes (a half-open connection). This proxy makes both on demand:

- ``hold()`` / ``release()``: all traffic, both ways, stops and is delivered later in order (a
  partition that heals; the kernel's buffers keep what was sent meanwhile);
- ``blackhole()``: every connection open now goes silent forever (what is sent to it is read and
  dropped: no reset, no close), while connections made afterwards work.
"""

from __future__ import annotations

import socket
import threading


class _Pipe:
    """One client connection and its upstream twin."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        self.dead = False  # blackholed: read and drop, forever

    def close(self) -> None:
        for s in (self.client, self.upstream):
            try:
                s.close()
            except OSError:
                pass


class TcpProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._pipes: list[_Pipe] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def hold(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def blackhole(self) -> int:
        """Silence every connection open now; returns how many."""
        with self._lock:
            for pipe in self._pipes:
                pipe.dead = True
            return len(self._pipes)

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for pipe in self._pipes:
                pipe.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pipe = _Pipe(client, upstream)
            with self._lock:
                self._pipes.append(pipe)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pipe, src, dst), daemon=True).start()

    def _pump(self, pipe: _Pipe, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                if not pipe.dead:
                    self._flowing.wait()  # held: leave the bytes in the kernel's buffer until released
                data = src.recv(65536)
                if not data:
                    break
                if pipe.dead:
                    continue  # half-open: swallow, never answer, never reset
                self._flowing.wait()
                if not pipe.dead:
                    dst.sendall(data)
        except OSError:
            pass
        if not pipe.dead:
            pipe.close()
