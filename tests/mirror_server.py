"""Download mirrors on 127.0.0.1 for the download tests (test_download.py, test_datasets.py).

One ThreadingHTTPServer serves a folder; each subfolder is one "mirror" (a subfolder that is
absent or empty answers 404). Under /short/ it announces the length of the file of the same
name under good/, sends half of it and closes the connection.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Server:
    root: Path
    base_url: str
    requests: list[str] = field(default_factory=list)

    def mirror(self, folder: str) -> str:
        """URL of a mirror served from root/folder, created empty if absent (so it 404s)."""
        (self.root / folder).mkdir(exist_ok=True)
        return f"{self.base_url}/{folder}/"

    def requests_to(self, folder: str) -> list[str]:
        return [path for path in self.requests if path.startswith(f"/{folder}/")]


def _handler_class(root: Path, requests: list[str]) -> type[SimpleHTTPRequestHandler]:
    class Handler(SimpleHTTPRequestHandler):
        timeout = 10  # a stuck client cannot hold a handler thread forever

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            if self.path.startswith("/short/"):
                self._send_then_hang_up()
            else:
                super().do_GET()

        def _send_then_hang_up(self):
            """Announce the good file's length, send half of it, close the connection."""
            content = (root / "good" / Path(self.path).name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content[: len(content) // 2])
            self.close_connection = True

    return Handler


@contextmanager
def running_server(root: Path) -> Iterator[Server]:
    """A server for the folder ``root`` (created), on a free port, stopped on exit."""
    root.mkdir()
    requests: list[str] = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(root, requests))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def dead_mirror_url() -> str:
    """A URL on a port nothing listens on: bind a socket, note its port, close it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"
