"""mnistnet.demo, the draw-a-digit page: its server over HTTP (answers, refusals, threads, the
command's Ctrl-C), then the page itself in headless Chromium.

The browser tests drive chromedriver through its W3C WebDriver HTTP API with urllib (no
selenium): they draw strokes with pointer actions, and put MNIST test digits (synthetic blobs
without $MNISTNET_DATA) through the page's own preparation. They skip where chromium or
chromedriver is missing (Debian: apt-get install chromium chromium-driver), except that
MNISTNET_REQUIRE=browser makes that a failure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mnistnet as mn
from mnistnet import demo
from mnistnet.cli import demo as demo_cli

TIMEOUT = 10  # seconds for one HTTP request or one wait in the browser
SIDE = 28


def required(what: str) -> bool:
    """True if MNISTNET_REQUIRE (comma-separated) lists `what`: skipping it is then a failure."""
    return what in os.environ.get("MNISTNET_REQUIRE", "").replace(" ", "").split(",")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """MNIST's ((x_train, y_train), (x_test, y_test)) from $MNISTNET_DATA, else None."""
    path = os.environ.get("MNISTNET_DATA")
    return mn.load_mnist(path) if path else None


@pytest.fixture(scope="module")
def model(digits) -> mn.Model:
    """A network that reads digits (cross-entropy, one epoch: 91%) where MNIST is at hand;
    else an untrained perceptron, for the tests that only check the page against the model."""
    if digits is None:
        return mn.preset("perceptron")
    (x_train, y_train), _ = digits
    trained = mn.preset("cross-entropy")
    trained.fit(x_train, y_train, epochs=1, verbose=0)
    return trained


@pytest.fixture(scope="module")
def log() -> io.StringIO:
    return io.StringIO()


@pytest.fixture(scope="module")
def server(model, log) -> Iterator[demo.DemoServer]:
    with demo.serve(model, port=0, log=log) as running:
        yield running


# --------------------------------------------------------------------------- HTTP helpers


def request(server: demo.DemoServer, path: str = "/predict", body: bytes | None = None,
            method: str | None = None, content_type: str = "application/json"
            ) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; HTTP errors are answers too."""
    headers = {"Content-Type": content_type} if body is not None else {}
    req = urllib.request.Request(server.url.rstrip("/") + path, data=body, headers=headers,
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def predict(server: demo.DemoServer, pixels: np.ndarray) -> dict[str, Any]:
    body = json.dumps({"pixels": [float(v) for v in pixels.ravel()]}).encode()
    status, _, answer = request(server, body=body)
    assert status == 200, answer
    return json.loads(answer)


def raw_request(server: demo.DemoServer, data: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes as they are (for what urllib will not send); (status, JSON body)."""
    head, _, body = raw_answer(server, data).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def some_pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(SIDE * SIDE).astype(np.float32)


def assert_answers(server: demo.DemoServer, model: mn.Model, pixels: np.ndarray) -> None:
    """The server's answer for pixels is exactly model.predict's."""
    answer = predict(server, pixels)
    expected = model.predict(pixels.reshape(1, -1))[0]
    np.testing.assert_array_equal(np.array(answer["probabilities"], dtype=np.float32),
                                  expected)
    best = int(np.argmax(expected))
    assert answer["digit"] == answer["class"] == best
    assert answer["label"] == model.class_names[best]


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(("path", "content_type", "marker"), [
    ("/", "text/html", b'<canvas id="pad"'),
    ("/index.html", "text/html", b'<canvas id="pad"'),
    ("/demo.js", "text/javascript", b"function preprocessDigit("),
    ("/demo.css", "text/css", b"#pad"),
])
def test_the_page_and_its_files_are_served(server, path, content_type, marker) -> None:
    status, headers, body = request(server, path)
    assert status == 200
    assert headers["Content-Type"].startswith(content_type)
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert marker in body


def test_the_page_loads_nothing_from_elsewhere(server) -> None:
    """No script, style, font or image from another site: the page works offline."""
    html, script, style = (request(server, path)[2].decode()
                           for path in ("/", "/demo.js", "/demo.css"))
    assert set(re.findall(r'(?:src|href)="([^"]*)"', html)) == {"demo.css", "demo.js", "data:,"}
    assert re.findall(r"fetch\(([^,)]*)", script) == ['"/predict"']
    assert not re.search(r"https?:|import\(|importScripts", script)
    assert not re.search(r"url\(|@import|@font-face", style)


def test_predict_answers_what_model_predict_says(server, model, digits) -> None:
    samples = [some_pixels(seed) for seed in range(3)] + [np.zeros(SIDE * SIDE, np.float32),
                                                          np.ones(SIDE * SIDE, np.float32)]
    if digits is not None:
        samples += list(digits[1][0][:3])
    for pixels in samples:
        assert_answers(server, model, pixels)


def pixels_json(values: list[Any]) -> bytes:
    return json.dumps({"pixels": values}).encode()


GOOD = [0.5] * (SIDE * SIDE)
REFUSED = {  # name: (path, method, body, content type, status)
    "bad JSON": ("/predict", "POST", b'{"pixels": [0.5,', "application/json", 400),
    "not UTF-8": ("/predict", "POST", b'{"pixels": "\xff"}', "application/json", 400),
    "not an object": ("/predict", "POST", b"[0.5, 0.5]", "application/json", 400),
    "no pixels": ("/predict", "POST", b'{"image": []}', "application/json", 400),
    "too few pixels": ("/predict", "POST", pixels_json(GOOD[:-1]), "application/json", 400),
    "too many pixels": ("/predict", "POST", pixels_json([*GOOD, 0.5]), "application/json", 400),
    "a string": ("/predict", "POST", pixels_json(["0.5", *GOOD[1:]]), "application/json", 400),
    "a boolean": ("/predict", "POST", pixels_json([True, *GOOD[1:]]), "application/json", 400),
    "null": ("/predict", "POST", pixels_json([None, *GOOD[1:]]), "application/json", 400),
    "NaN": ("/predict", "POST", pixels_json([float("nan"), *GOOD[1:]]), "application/json",
            400),
    "Infinity": ("/predict", "POST", pixels_json([*GOOD[1:], float("inf")]),
                 "application/json", 400),
    "1e400": ("/predict", "POST", pixels_json(GOOD[1:]).replace(b"[", b"[1e400, "),
              "application/json", 400),
    "over 1": ("/predict", "POST", pixels_json([*GOOD[1:], 1.5]), "application/json", 400),
    "negative": ("/predict", "POST", pixels_json([-0.01, *GOOD[1:]]), "application/json", 400),
    "nested too deep": ("/predict", "POST", b"[" * 60000, "application/json", 400),
    "text/plain": ("/predict", "POST", pixels_json(GOOD), "text/plain", 415),
    "form data": ("/predict", "POST", pixels_json(GOOD), "application/x-www-form-urlencoded",
                  415),
    # As large as the server reads and drops (to be read, the answer must wait for that).
    "over 64 KB": ("/predict", "POST", b" " * demo.MAX_DISCARD_BYTES, "application/json",
                   413),
    "POST elsewhere": ("/nothing", "POST", pixels_json(GOOD), "application/json", 404),
    "GET elsewhere": ("/nothing", "GET", None, "", 404),
    "outside the folder": ("/../demo.py", "GET", None, "", 404),
    "GET /predict": ("/predict", "GET", None, "", 405),
    "POST the page": ("/", "POST", pixels_json(GOOD), "application/json", 405),
    "PUT": ("/predict", "PUT", pixels_json(GOOD), "application/json", 405),
    "PUT 4 MB": ("/predict", "PUT", b" " * demo.MAX_DISCARD_BYTES, "application/json", 405),
    "DELETE": ("/", "DELETE", None, "", 405),
    "a made-up method": ("/predict", "BREW", None, "", 405),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_a_bad_request_gets_a_4xx_in_json_and_the_server_goes_on(server, model, log,
                                                                 case) -> None:
    path, method, body, content_type, expected = REFUSED[case]
    status, headers, answer = request(server, path, body, method, content_type)
    assert status == expected
    assert headers["Content-Type"] == "application/json"
    message = json.loads(answer)["error"]
    assert 0 < len(message) < 120 and "\n" not in message
    assert_answers(server, model, some_pixels(0))
    assert "Traceback" not in log.getvalue()


@pytest.mark.parametrize(("data", "expected"), [
    (b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\n\r\n", 411),
    (b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\n"
     b"Content-Length: a lot\r\n\r\n", 400),
    (b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 411),
    (b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\n"
     b"Content-Length: 100\r\n\r\n{}", 400),  # the client stops before the body's end
    (b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\n"
     b"Content-Length: 99999999\r\n\r\n", 413),
    (b"GET /a b HTTP/1.1\r\n\r\n", 400),
    (b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
], ids=["no length", "length not a number", "chunked", "short body", "huge length",
        "bad request line", "long URL"])
def test_a_malformed_request_gets_a_4xx_in_json(server, model, log, data, expected) -> None:
    status, answer = raw_request(server, data)
    assert status == expected
    assert 0 < len(answer["error"]) < 120
    assert_answers(server, model, some_pixels(1))
    assert "Traceback" not in log.getvalue()


def raw_answer(server: demo.DemoServer, data: bytes) -> bytes:
    """Everything the server sends back for bytes sent as they are."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=TIMEOUT) as connection:
        connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    return reply


@pytest.mark.parametrize(("data", "expected"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"HTTP/9.9\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    (b"\x00\xff junk\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET /predict\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 505),
], ids=["garbage", "bare GET", "HTTP/9.9", "TLS hello", "binary junk", "HTTP/0.9 GET",
        "HTTP/0.9 GET predict", "version 9.9"])
def test_a_request_line_taken_for_http_0_9_gets_a_status_line(server, model, log, data,
                                                               expected) -> None:
    """http.server answers such lines as HTTP/0.9: the JSON error went out with no status
    line and no headers (and "GET /" got the page so), though the docstring promised a
    4xx."""
    head, _, body = raw_answer(server, data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert re.fullmatch(rf"HTTP/1\.[01] {expected} [A-Za-z ]+", lines[0]), lines
    assert "Content-Type: application/json" in lines
    assert f"Content-Length: {len(body)}" in lines
    message = json.loads(body)["error"]
    assert 0 < len(message) < 120 and "\n" not in message
    assert_answers(server, model, some_pixels(2))  # and it goes on serving
    assert "Traceback" not in log.getvalue()


def test_refusals_are_logged_one_line_each(server, log) -> None:
    request(server, "/predict", b"{", content_type="application/json")
    last = log.getvalue().splitlines()[-1]
    assert last.startswith("mnistnet demo: 127.0.0.1 ") and last.endswith(" 400"), last


def test_a_slow_client_does_not_hold_up_the_others(server, model) -> None:
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=TIMEOUT) as slow:
        slow.sendall(b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"pix")
        for seed in range(3):  # while that request waits for the rest of its body
            assert_answers(server, model, some_pixels(seed))


def test_concurrent_requests_each_get_their_own_answer(server, model) -> None:
    failures: list[BaseException] = []

    def client(first_seed: int) -> None:
        try:
            for seed in range(first_seed, first_seed + 8):
                assert_answers(server, model, some_pixels(seed))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(100 * i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures[0]


def test_serve_refuses_a_model_that_does_not_read_images_into_classes() -> None:
    with pytest.raises(ValueError, match="28x28 images and 2 or more classes"):
        demo.serve(mn.Model([mn.Dense(10)], input_dim=64), port=0)
    with pytest.raises(ValueError, match="28x28 images and 2 or more classes"):
        demo.serve(mn.Model([mn.Dense(1)], input_dim=784), port=0)


def test_close_releases_the_port(model) -> None:
    server = demo.serve(model, port=0, log=None)
    host, port = server.server_address[:2]
    server.close()
    with socket.socket() as probe:
        assert probe.connect_ex((host, port)) != 0


DEMO_SCRIPT = """
import argparse, signal, sys
from mnistnet.cli import demo
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
args = demo.add_arguments(argparse.ArgumentParser()).parse_args(sys.argv[1:])
sys.exit(demo.run(args))
"""


def test_the_demo_command_prints_its_url_and_stops_on_ctrl_c(tmp_path, model) -> None:
    model.save(tmp_path / "model.npz")
    process = subprocess.Popen(
        [sys.executable, "-c", DEMO_SCRIPT, str(tmp_path / "model.npz"), "--port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert " at http://" in line, f"no URL printed: {line!r}"
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=TIMEOUT) as page:
            assert b'<canvas id="pad"' in page.read()
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert line.startswith(f"mnistnet demo: {tmp_path / 'model.npz'} at http://127.0.0.1:")
    assert process.returncode == demo_cli.EXIT_INTERRUPTED
    assert errors == "mnistnet demo: stopped\n"


def test_the_demo_command_refuses_a_port_in_use(tmp_path, model, server) -> None:
    model.save(tmp_path / "model.npz")
    args = demo_cli.add_arguments(argparse.ArgumentParser()).parse_args(
        [str(tmp_path / "model.npz"), "--port", str(server.server_address[1])])
    with pytest.raises(OSError, match=r"^cannot listen on 127\.0\.0\.1:\d+: .*in use"):
        demo_cli.run(args)


# --------------------------------------------------------------------------- the browser


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip (fail under MNISTNET_REQUIRE=browser)."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                    "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        reason = ("headless Chromium and chromedriver are needed for the browser tests "
                  "(Debian: apt-get install chromium chromium-driver)")
        if required("browser"):
            pytest.fail(f"{reason} (MNISTNET_REQUIRE={os.environ['MNISTNET_REQUIRE']})")
        pytest.skip(reason)
    return chromium, driver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WebDriver:
    """The few W3C WebDriver commands these tests use, over chromedriver's HTTP API."""

    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference

    def __init__(self, port: int, chromium: str, profile: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        capabilities = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1000,800",
                     f"--user-data-dir={profile}"]}}
        session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.base += f"/session/{session['sessionId']}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            with error:
                value = json.loads(error.read())["value"]
            raise AssertionError(f"WebDriver {method} {path}: {value['error']}: "
                                 f"{value['message'][:500]}") from None

    def open(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def element(self, css: str) -> dict[str, str]:
        return self.call("POST", "/element", {"using": "css selector", "value": css})

    def click(self, css: str) -> None:
        self.call("POST", f"/element/{self.element(css)[self.ELEMENT]}/click", {})

    def stroke(self, css: str, points: list[tuple[int, int]], pointer: str = "mouse") -> None:
        """Press at points[0], move through the others, release; points are offsets from
        the element's centre."""
        origin = self.element(css)
        moves = [{"type": "pointerMove", "origin": origin, "x": x, "y": y, "duration": 10}
                 for x, y in points]
        steps = [moves[0], {"type": "pointerDown", "button": 0}, *moves[1:],
                 {"type": "pointerUp", "button": 0}]
        self.call("POST", "/actions", {"actions": [{
            "type": "pointer", "id": f"{pointer}-pen", "parameters": {"pointerType": pointer},
            "actions": steps}]})
        self.call("DELETE", "/actions")

    def wait_until(self, script: str, timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.run(script)):
            assert time.monotonic() < deadline, f"still false after {timeout} s: {script}"
            time.sleep(0.02)
        return value

    def quit(self) -> None:
        self.call("DELETE", "")


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[WebDriver]:
    chromium, driver = find_browser()
    port = free_port()
    process = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_driver(port, process)
        session = WebDriver(port, chromium, tmp_path_factory.mktemp("chromium-profile"))
        try:
            yield session
        finally:
            session.quit()
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def wait_for_driver(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as reply:
                if json.loads(reply.read())["value"]["ready"]:
                    return
        except OSError:
            pass
        assert process.poll() is None, f"chromedriver exited with code {process.returncode}"
        assert time.monotonic() < deadline, "chromedriver did not start"
        time.sleep(0.05)


@pytest.fixture
def page(browser, server) -> WebDriver:
    """The demo page, freshly loaded, with nothing drawn."""
    browser.open(server.url)
    browser.wait_until("return typeof mnistDemo === 'object' && mnistDemo.isIdle()")
    return browser


def shown(page: WebDriver) -> tuple[str, np.ndarray]:
    """Once the page is idle: (the digit it shows, the 28x28 input it last sent)."""
    page.wait_until("return mnistDemo.isIdle()")
    digit = page.run("return document.getElementById('label').textContent")
    status = page.run("return document.getElementById('status').textContent")
    assert not status.startswith("No answer"), status
    pixels = np.array(page.run("return Array.from(mnistDemo.input)"), dtype=np.float32)
    return digit, pixels.reshape(SIDE, SIDE)


def ink_box(image: np.ndarray, threshold: float = 0.05) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows and columns holding ink, inclusive."""
    rows = np.flatnonzero((image >= threshold).any(axis=1))
    columns = np.flatnonzero((image >= threshold).any(axis=0))
    return rows[0], rows[-1], columns[0], columns[-1]


def centre_of_mass(image: np.ndarray) -> np.ndarray:
    """(row, column), in pixels counted from 0."""
    return (np.indices(image.shape) * image).sum(axis=(1, 2)) / image.sum()


BAR_LENGTHS = """
return Array.from(document.querySelectorAll('#bars .fill'),
                  (fill) => fill.offsetWidth / fill.parentElement.clientWidth);
"""


def test_drawing_a_one_shows_a_one(page, model, digits) -> None:
    page.stroke("#pad", [(4, -110), (2, -40), (0, 30), (-2, 110)])
    digit, seen = shown(page)
    outputs = model.predict(seen.reshape(1, -1))[0]
    assert digit == str(int(np.argmax(outputs)))
    np.testing.assert_allclose(page.run(BAR_LENGTHS), np.clip(outputs, 0, 1), atol=0.01)
    top, bottom, left, right = ink_box(seen)
    assert bottom - top + 1 == 20  # a tall stroke is scaled to 20 rows ...
    assert right - left + 1 <= 6  # ... and stays thin
    np.testing.assert_allclose(centre_of_mass(seen), [14, 14], atol=0.6)
    if digits is not None:
        assert digit == "1"


def test_drawing_by_touch_then_clear(page) -> None:
    page.stroke("#pad", [(-90, 0), (0, 5), (90, 0)], pointer="touch")
    digit, seen = shown(page)
    top, bottom, left, right = ink_box(seen)
    assert digit.isdigit() and right - left + 1 == 20 and bottom - top + 1 <= 6
    page.click("#clear")
    digit, seen = shown(page)
    assert digit == "?" and not seen.any()
    bars = page.run("return Array.from(document.querySelectorAll('#bars .value'), "
                    "(value) => value.textContent)")
    assert bars == [""] * 10


PAINT_AND_UPDATE = """
const [pixels, side, zoom] = arguments;
const pad = document.getElementById('pad');
const pen = pad.getContext('2d');
const image = pen.createImageData(pad.width, pad.height);
const offset = (pad.width - side * zoom) / 2;
for (let y = 0; y < pad.height; y++) {
  for (let x = 0; x < pad.width; x++) {
    const sy = Math.floor((y - offset) / zoom), sx = Math.floor((x - offset) / zoom);
    const inside = sy >= 0 && sy < side && sx >= 0 && sx < side;
    const level = inside ? pixels[sy * side + sx] : 0;
    image.data.set([level, level, level, 255], 4 * (y * pad.width + x));
  }
}
pen.putImageData(image, 0, 0);
mnistDemo.update();
"""


def blobs(count: int) -> np.ndarray:
    """Digit-like strokes off centre and of several sizes, as uint8 28x28 images."""
    rng = np.random.default_rng(5)
    rows, columns = np.indices((SIDE, SIDE))
    images = []
    for _ in range(count):
        cy, cx = rng.uniform(9, 19, size=2)
        ry, rx = rng.uniform(4, 9), rng.uniform(2, 8)
        ring = np.abs(np.hypot((rows - cy) / ry, (columns - cx) / rx) - 1) < 0.35
        images.append(np.where(ring, 255, 0).astype(np.uint8))
    return np.array(images)


def test_test_digits_through_the_pages_preparation(page, model, digits) -> None:
    """Each image drawn 8x larger on the pad comes back cropped to 20 pixels and centred by
    its centre of mass; MNIST's test digits, prepared so already, come back as they were.
    The digit shown is the model's answer for the page's 28x28 input."""
    if digits is None:
        images = blobs(20)
    else:
        images = np.round(digits[1][0][:20] * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)
    as_they_were = same_reading = 0
    for original in images:
        page.run(PAINT_AND_UPDATE, original.ravel().tolist(), SIDE, 8)
        digit, seen = shown(page)
        assert digit == str(int(np.argmax(model.predict(seen.reshape(1, -1)))))
        top, bottom, left, right = ink_box(seen)
        assert max(bottom - top, right - left) + 1 in (19, 20)  # 20 but for faint rims
        np.testing.assert_allclose(centre_of_mass(seen), [14, 14], atol=0.75)
        given = original.astype(np.float32) / 255
        # Equal, but for rims fainter than the crop's threshold (0.05), which may be cut off.
        as_they_were += np.allclose(seen, given, rtol=0, atol=0.05)
        same_reading += digit == str(int(np.argmax(model.predict(given.reshape(1, -1)))))
    if digits is not None:
        assert as_they_were == 20, f"{as_they_were} of 20 test digits came back as they were"
        assert same_reading >= 19, f"{same_reading} of 20 test digits read as before"


PAD_PNG = "return document.getElementById('pad').toDataURL('image/png')"


def pad_picture(page: WebDriver, path: Path) -> Path:
    """The pad's drawing as the PNG file the browser makes of it (what a user would save)."""
    import base64

    url = page.run(PAD_PNG)
    assert url.startswith("data:image/png;base64,"), url[:40]
    path.write_bytes(base64.b64decode(url.partition(",")[2]))
    return path


def test_the_python_preparation_is_the_pages(page, model, tmp_path, capsys) -> None:
    """mnistnet.images, the preparation `mnistnet predict digit.png` uses, gives what the
    page's own JavaScript gives on the same drawing: drawn with the pen, saved as PNG (and
    as its negative, dark on light); and `mnistnet predict` reads the digit the page shows."""
    image = pytest.importorskip("PIL.Image", reason='Pillow: pip install "mnistnet[image]"')
    from mnistnet import images
    from mnistnet.cli import main

    page.stroke("#pad", [(-60, -90), (50, -95), (20, -20), (-10, 60), (-25, 105)])
    page.stroke("#pad", [(-30, -10), (45, -15)])
    digit, seen = shown(page)
    picture = pad_picture(page, tmp_path / "drawing.png")
    np.testing.assert_allclose(images.load_digit(picture), seen, rtol=0, atol=1e-6)
    with image.open(picture) as drawn:
        negative = 255 - np.asarray(drawn.convert("L"))
    image.fromarray(negative).save(tmp_path / "negative.png")
    np.testing.assert_allclose(images.load_digit(tmp_path / "negative.png"), seen, rtol=0,
                               atol=1e-6)
    model_file = tmp_path / "model.npz"
    model.save(model_file)
    capsys.readouterr()
    assert main(["predict", str(model_file), str(picture)]) == 0
    assert capsys.readouterr().out.startswith(f"{picture}[0]: digit {digit} (p=")


def test_the_python_preparation_is_the_pages_on_test_digits(page, digits) -> None:
    """The pad's grey levels (MNIST test digits, or blobs, painted 8x larger off centre) made
    into a digit by mnistnet.images.prepare_digit and by the page."""
    from mnistnet import images

    if digits is None:
        pictures = blobs(10)
    else:
        pictures = np.round(digits[1][0][:10] * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)
    for original in pictures:
        page.run(PAINT_AND_UPDATE, original.ravel().tolist(), SIDE, 8)
        _, seen = shown(page)
        gray = np.array(page.run(PAD_GRAY), dtype=np.float32).reshape(280, 280)
        np.testing.assert_allclose(images.prepare_digit(gray), seen, rtol=0, atol=1e-6)


PAD_GRAY = """
const pad = document.getElementById('pad');
const {data} = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height);
return Array.from({length: pad.width * pad.height}, (_, i) => data[4 * i] / 255);
"""


def test_clearing_while_asking_forgets_the_old_drawing(page) -> None:
    """Clear while one request is on its way and another waits: neither answer is shown."""
    image = blobs(1)[0]
    page.run(PAINT_AND_UPDATE + "mnistDemo.update(); mnistDemo.clear();", image.ravel().tolist(),
             SIDE, 8)
    digit, seen = shown(page)
    assert digit == "?" and not seen.any()


PREPARE = """
const [patch, height, width, top, left] = arguments;
const gray = new Float32Array(280 * 280);
patch.forEach((value, i) => {
  gray[(top + Math.floor(i / width)) * 280 + left + i % width] = value;
});
return Array.from(mnistDemo.preprocessDigit(gray, 280, 280));
"""


def test_the_preparation_averages_areas_and_centres_the_mass(page) -> None:
    """A 30x21 patch scaled to 20x14 is the mean of each 1.5x1.5 pixels it covers (here:
    3x3 blocks of the patch doubled), placed with its centre of mass at pixel (14, 14)."""
    patch = np.random.default_rng(2).uniform(0.1, 1, size=(30, 21)).astype(np.float32)
    prepared = np.array(page.run(PREPARE, patch.ravel().tolist(), 30, 21, 100, 37))
    doubled = np.kron(patch, np.ones((2, 2)))
    scaled = doubled.reshape(20, 3, 14, 3).mean(axis=(1, 3))
    top, left = np.round(14 - centre_of_mass(scaled)).astype(int)
    expected = np.zeros((SIDE, SIDE))
    expected[top:top + 20, left:left + 14] = scaled
    np.testing.assert_allclose(prepared.reshape(SIDE, SIDE), expected, atol=1e-6)


def test_the_preparation_stays_inside_a_box_in_the_corner(page) -> None:
    """161 / 20 pixels a cell: the last cell's end rounds past the pad's last pixel."""
    ink = [1.0] * (161 * 161)
    prepared = np.array(page.run(PREPARE, ink, 161, 161, 280 - 161, 280 - 161))
    expected = np.zeros((SIDE, SIDE))
    expected[5:25, 5:25] = 1  # centre of mass 9.5: moved by 14 - 9.5, rounded up
    np.testing.assert_allclose(prepared.reshape(SIDE, SIDE), expected, atol=1e-6)


def test_a_fashion_model_page_shows_its_class_names(browser) -> None:
    """A model of Fashion-MNIST: the page asks for a piece of clothing, has one bar per class
    labelled with its name, and shows the name of the class it reads."""
    fashion = mn.preset("perceptron")
    fashion.class_names = mn.datasets.class_names("fashion-mnist")
    fashion.dataset = "fashion-mnist"
    with demo.serve(fashion, port=0, log=None) as server:
        browser.open(server.url)
        browser.wait_until("return typeof mnistDemo === 'object' && mnistDemo.isIdle()")
        heading = browser.run("return document.querySelector('h1').textContent")
        bars = browser.run("return [...document.querySelectorAll('#bars li > span:first-child')]"
                           ".map((s) => s.textContent)")
        browser.stroke("#pad", [(0, -80), (0, 80)])
        label, _ = shown(browser)
    assert heading == "Draw a piece of clothing"
    assert bars == list(fashion.class_names)
    assert label in fashion.class_names
