"""``mnistnet demo MODEL.npz``: a web page to draw a digit on and watch the network read it
(or a piece of clothing, a letter: whatever the model's classes are).

The page (mnistnet/demo_static/: HTML, JavaScript and CSS; nothing is fetched from anywhere
else) prepares the drawing as MNIST's digits were prepared, shows the 28x28 image the
network gets, and sends it to the server whenever it changes. The server writes the model's
class names into the page, which shows one bar per class:

    POST /predict   Content-Type: application/json   {"pixels": [784 numbers from 0 to 1]}
    -> 200 {"probabilities": [one per class], "class": c, "label": "Trouser", "digit": c}
           (pixels row by row, 1 = ink; "digit" is "class", kept for older clients)
    -> 4xx {"error": "what was wrong"}                    (bad JSON, length, values, ...)

A model that starts with a Rescaling layer takes pixels as stored, 0..255: the page's pixels
are multiplied by 255 for it.

The server is the standard library's ThreadingHTTPServer, on 127.0.0.1 unless told
otherwise. It answers every malformed request with a 4xx (a status line, headers and a
one-line JSON message, even for request lines the standard library takes for HTTP/0.9: those
are refused), logs errors to stderr in one line each (no tracebacks), and keeps serving.

    from mnistnet import demo
    with demo.serve(model, port=0) as server:   # port 0: any free port
        print(server.url)
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from string import Template
from typing import Any, TextIO
from urllib.parse import urlsplit

import numpy as np

from mnistnet.model import Model

__all__ = ["DemoServer", "render_page", "serve", "subject"]

IMAGE_SIDE = 28
PREDICT_PATH = "/predict"
PAGE_PATHS = ("/", "/index.html")  # the page, with the model's classes written in
# What the page asks to draw, for a model of the named dataset's classes (digits: "digit").
SUBJECTS = {"fashion-mnist": "piece of clothing", "kmnist": "hiragana character",
            "emnist-letters": "letter", "emnist-balanced": "letter or digit",
            "emnist-byclass": "letter or digit"}
MAX_BODY_BYTES = 64 * 1024  # 784 pixels as JSON floats take about 16 KB
# A body over the limit but no larger than this is read and dropped before the 413: closing
# a connection with unread data resets it, and the client would never see the answer.
MAX_DISCARD_BYTES = 4 * 1024 * 1024
REQUEST_TIMEOUT = 30  # seconds a client may take to send its request
ALLOWED_METHODS = ("GET", "HEAD", "POST")
STATIC_FILES = {  # URL path -> (file in demo_static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/demo.css": ("demo.css", "text/css; charset=utf-8"),
}
# The page may load only its own files (the empty favicon is a data: URL).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
EXIT_INTERRUPTED = 130


class RequestError(Exception):
    """A request the server refuses: the HTTP status and a short message for the client."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_pixels(body: bytes, count: int) -> np.ndarray:
    """The (1, count) float32 row a POST /predict body holds, or RequestError(400)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError too
        raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not valid JSON") from None
    pixels = data.get("pixels") if isinstance(data, dict) else None
    if not isinstance(pixels, list) or len(pixels) != count:
        raise RequestError(HTTPStatus.BAD_REQUEST,
                           f'expected {{"pixels": [{count} numbers from 0 to 1]}}')
    for i, value in enumerate(pixels):
        # type(), not isinstance: true and false are not pixels. NaN fails the comparison.
        if type(value) not in (int, float) or not 0 <= value <= 1:
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               f"pixels[{i}] is not a number from 0 to 1")
    return np.array(pixels, dtype=np.float32).reshape(1, count)


def subject(model: Model) -> str:
    """What the page asks to draw: "digit" for a model of digits, else what its dataset's
    classes are ("piece of clothing"), else "picture"."""
    if model.reads_digits:
        return "digit"
    return SUBJECTS.get(model.dataset or "", "picture")


def render_page(template: bytes, model: Model) -> bytes:
    """index.html with the model's classes written in: ${subject}, ${count} and ${classes}
    (a JSON object {"names": [...], "subject": ...} for demo.js, escaped so that no class
    name can end its script element)."""
    classes = json.dumps({"names": list(model.class_names), "subject": subject(model)})
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        classes = classes.replace(char, escaped)
    return Template(template.decode()).substitute(
        subject=subject(model), count=model.n_outputs, classes=classes).encode()


def _read_static_files() -> dict[str, tuple[bytes, str]]:
    """URL path -> (content, content type), read once from the installed package."""
    folder = resources.files("mnistnet").joinpath("demo_static")
    try:
        return {path: (folder.joinpath(name).read_bytes(), content_type)
                for path, (name, content_type) in STATIC_FILES.items()}
    except OSError as exc:
        raise OSError(f"the demo page's files are missing from the installed mnistnet "
                      f"({exc})") from None


class DemoServer(ThreadingHTTPServer):
    """The demo's HTTP server for one model; serve() starts one in a thread.

    Attributes:
        model: the network answering /predict (its predict is safe from several threads).
        url: where the page is, e.g. http://127.0.0.1:8000/.
        log: where errors are logged, one line each (None: nowhere).
    """

    daemon_threads = True  # a stalled client never keeps the process alive
    request_queue_size = 64  # connections waiting to be accepted (the default is 5)

    def __init__(self, model: Model, host: str = "127.0.0.1", port: int = 8000,
                 log: TextIO | None = sys.stderr) -> None:
        if model.input_dim != IMAGE_SIDE * IMAGE_SIDE or model.n_outputs < 2:
            raise ValueError(f"the demo needs a model of {IMAGE_SIDE}x{IMAGE_SIDE} images "
                             f"and 2 or more classes; {model!r} has {model.input_dim} inputs "
                             f"and {model.n_outputs} outputs")
        self.model = model
        self.log = log
        self.pages = _read_static_files()
        for path in PAGE_PATHS:
            page, content_type = self.pages[path]
            self.pages[path] = (render_page(page, model), content_type)
        self._thread: threading.Thread | None = None
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), DemoHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def start(self) -> DemoServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="mnistnet-demo",
                                        daemon=True)
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the server stops; Ctrl-C raises KeyboardInterrupt here."""
        # join() with a timeout: a join without one cannot be interrupted on Windows.
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __enter__(self) -> DemoServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def say(self, message: str) -> None:
        if self.log is not None:
            print(f"mnistnet demo: {message}", file=self.log, flush=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exception a request raised past the handler (e.g. the client hung up
        mid-answer): one line, not socketserver's traceback."""
        exc = sys.exc_info()[1]
        self.say(f"{client_address[0]}: {type(exc).__name__}: {exc}")


def serve(model: Model, host: str = "127.0.0.1", port: int = 8000,
          log: TextIO | None = sys.stderr) -> DemoServer:
    """A DemoServer for ``model`` on host:port (0: any free port; see ``server.url``),
    already serving in a daemon thread. Stop it with ``server.close()``, or use it as a
    context manager."""
    return DemoServer(model, host, port, log).start()


class DemoHandler(BaseHTTPRequestHandler):
    """GET the page's files, POST /predict; everything else a 4xx with a JSON message."""

    server: DemoServer
    timeout = REQUEST_TIMEOUT
    # Until the request line names its version, answers are HTTP/1.0's, status line and
    # headers included: with http.server's default, HTTP/0.9, a request line it cannot
    # parse ("GARBAGE", a bare "GET", binary junk) got its error as a bare body.
    default_request_version = "HTTP/1.0"

    def version_string(self) -> str:
        return "mnistnet-demo"  # the Server header, without http.server's Python version

    def parse_request(self) -> bool:
        # HTTP/0.9's request line, "GET /path" without a version, wants an answer without
        # status line or headers: refused with a proper 400 instead.
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        if len(line.split()) == 2:
            self.command, self.requestline = None, line
            self.request_version = self.default_request_version
            self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 requests are not served; "
                                                    "send METHOD PATH HTTP/1.1")
            return False
        # http.server answers 501 to a method it has no do_ for: here any method but GET,
        # HEAD and POST is one the page does not allow.
        if not super().parse_request():
            return False
        if self.command not in ALLOWED_METHODS:
            self._discard_body()
            self._send_error(RequestError(HTTPStatus.METHOD_NOT_ALLOWED,
                                          f"method {self.command} is not allowed"))
            return False
        return True

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path not in self.server.pages:
            self._send_error(self._unknown(path, "GET"))
            return
        content, content_type = self.server.pages[path]
        self._send(HTTPStatus.OK, content, content_type)

    do_HEAD = do_GET  # _send leaves the body out

    def do_POST(self) -> None:
        try:
            body = self._receive_body()
            path = urlsplit(self.path).path
            if path != PREDICT_PATH:
                raise self._unknown(path, "POST")
            if self.headers.get_content_type() != "application/json":
                raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                                   "send the pixels as application/json")
            pixels = parse_pixels(body, self.server.model.input_dim)
        except RequestError as exc:
            self._send_error(exc)
            return
        except TimeoutError:
            self._send_error(RequestError(HTTPStatus.REQUEST_TIMEOUT,
                                          "the request body did not arrive in time"))
            return
        self._answer_prediction(pixels)

    def _answer_prediction(self, pixels: np.ndarray) -> None:
        model = self.server.model
        if model.plan.takes_pixels:  # a Rescaling first: pixels as stored, 0..255
            pixels = pixels * np.float32(255)
        try:
            outputs = model.predict(pixels)[0]
        except Exception as exc:  # a bug, not the client's fault: say so, keep serving
            self.server.say(f"predict failed: {type(exc).__name__}: {exc}")
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR,
                            {"error": "the model failed on these pixels"})
            return
        best = int(np.argmax(outputs))
        self._send_json(HTTPStatus.OK, {"probabilities": [float(p) for p in outputs],
                                        "class": best, "label": model.class_names[best],
                                        "digit": best})

    def _unknown(self, path: str, method: str) -> RequestError:
        """404 for a path that is nothing here, 405 for a method the path does not take."""
        known = {*self.server.pages, PREDICT_PATH}
        if path not in known:
            return RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path[:100]}")
        allowed = "POST" if path == PREDICT_PATH else "GET"
        return RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes {allowed}, not "
                                                           f"{method}")

    # -- the request body ------------------------------------------------------------------
    def _declared_length(self) -> int:
        if "Transfer-Encoding" in self.headers:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not chunks")
        text = self.headers.get("Content-Length")
        if text is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is missing")
        if not (text.isascii() and text.strip().isdigit()):
            raise RequestError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
        return int(text)

    def _receive_body(self) -> bytes:
        length = self._declared_length()
        if length > MAX_BODY_BYTES:
            self._discard(length)
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the body is over {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(length)
        if len(body) < length:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is shorter than its "
                                                       "Content-Length")
        return body

    def _discard_body(self) -> None:
        """Read and drop the body of a request refused before its body was looked at."""
        try:
            self._discard(self._declared_length())
        except (RequestError, OSError):
            pass  # no readable body: nothing to drop

    def _discard(self, length: int) -> None:
        if length > MAX_DISCARD_BYTES:
            return  # not worth reading: the client may see a reset instead of the 413
        while length > 0:
            chunk = self.rfile.read(min(length, 64 * 1024))
            if not chunk:
                return
            length -= len(chunk)

    # -- answers ---------------------------------------------------------------------------
    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, headers too long, ...) as
        JSON too."""
        status = HTTPStatus(code)
        self._send_error(RequestError(status, _printable(message or status.phrase, 100)))

    def _send_error(self, error: RequestError) -> None:
        self.close_connection = True
        self._send_json(error.status, {"error": error.message})

    def _send_json(self, status: HTTPStatus, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status: HTTPStatus, content: bytes, content_type: str) -> None:
        self.send_response(status)
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "POST" if urlsplit(self.path or "").path ==
                             PREDICT_PATH else "GET, HEAD")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Only refusals are logged: a drawing sends a request every few strokes."""
        if isinstance(code, int) and code >= 400:
            self.log_message('"%s" %s', _printable(self.requestline), code)

    def log_error(self, format: str, *args: Any) -> None:
        """http.server's own messages are the JSON answers already logged by log_request."""

    def log_message(self, format: str, *args: Any) -> None:
        self.server.say(f"{self.client_address[0]} {format % args}")


def _printable(text: str, limit: int = 200) -> str:
    """Client-sent text fit for a log line: shortened, control characters replaced."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])
