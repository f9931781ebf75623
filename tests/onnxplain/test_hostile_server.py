"""The server under load it must survive: clients that never send their body, more requests than it holds,
decompression bombs and huge cost parameters; meanwhile /health answers within a second.

Each server is uvicorn on a free 127.0.0.1 port (test_serve.LiveServer) with uvicorn's settings from
`onnxplain serve`; every loop here is bounded by a deadline.
"""
from __future__ import annotations

import json
import logging
import re
import select
import socket
import threading
import time

import httpx
import pytest
import uvicorn

import onnxplain
from hostile_inputs import IMAGE, bomb, png, tiny
from onnxplain.cli.serve import uvicorn_settings
from onnxplain.serve import create_app
from test_serve import LiveServer


class Live(LiveServer):
    """LiveServer with the uvicorn settings `onnxplain serve` uses."""

    def __init__(self, app):
        super().__init__(app, lifetime=90)
        config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_settings(app))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)


def explainer(**limits):
    return onnxplain.Explainer(tiny(), quiet=True, **limits)


def half_sent(url: str, path: str = "/predict", length: int = 10_000, kind: str = "image/png") -> socket.socket:
    """A client that sends the request head and never the body."""
    host, port = url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=10)
    client.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n\r\n"
                   .encode())
    return client


def answer(client: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one answer on a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    return next((int(line.split(":")[1]) for line in head.splitlines() if line.startswith("content-length")), 0)


def health_within(client: httpx.Client, seconds: float = 1.0) -> dict:
    start = time.monotonic()
    response = client.get("/health", timeout=seconds)
    assert response.status_code == 200 and time.monotonic() - start < seconds
    return response.json()


def test_slow_clients_get_408_and_never_starve_health():
    """Clients that send headers only are answered 408 after --body-timeout; past the app's own in-flight limit
    the next request is the app's JSON 503 with Retry-After (not uvicorn's plain text); /health answers throughout."""
    app = create_app(explainer(), queue_size=1, workers=1, max_batch=1, body_timeout=1.5)
    assert app.state.config.max_inflight == 2
    with Live(app) as live, httpx.Client(base_url=live.url) as client:
        slow = [half_sent(live.url) for _ in range(2)]
        time.sleep(0.3)
        busy = client.post("/predict", content=png(IMAGE), headers={"content-type": "image/png"})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json() == {"error": "The server is busy (2 requests in progress); retry shortly."}
        for _ in range(3):
            health_within(client)
        for connection in slow:
            assert answer(connection) == (408, {"error": "The request body did not arrive within 1.5 s; send the "
                                                         "whole body at once."})
            connection.close()
        ok = client.post("/predict", content=png(IMAGE), headers={"content-type": "image/png"})
        assert ok.status_code == 200 and len(ok.json()["top"]) == 3


def test_bomb_and_huge_n_are_refused_at_once_while_work_is_cancelled_at_its_deadline():
    """A decompression bomb (413) and rise n=1e12 (413) are refused before queueing; a long job is stopped at
    --timeout (504) and its worker is free again right after; /health answers within a second all along."""
    app = create_app(explainer(max_pixels=1_000_000, max_forwards=10**6), workers=1, timeout=2.0)
    with Live(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        start = time.monotonic()
        refused = client.post("/predict", content=bomb(), headers={"content-type": "image/png"})
        assert refused.status_code == 413
        assert refused.json() == {"error": "The image is 2000x2000 (4.0 megapixels), over the limit of 1 megapixels; "
                                           "scale it down or raise the server's --max-pixels."}
        huge = client.post("/explain", json={"image": _b64(png(IMAGE)), "method": "rise", "params": {"n": 10**12}})
        assert huge.status_code == 413
        assert huge.json() == {"error": "Method 'rise' with these parameters needs about 1,000,000,000,000 forward "
                                        "passes per image, over the limit of 1,000,000; lower n, steps or the number "
                                        "of windows (field 'params'), or raise the server's --max-forwards."}
        assert time.monotonic() - start < 5

        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1) as pool:
            long = pool.submit(client.post, "/explain", json={"image": _b64(png(IMAGE)), "method": "rise",
                                                               "params": {"n": 300_000}})
            deadline = time.monotonic() + 10
            while health_within(client)["running"] == 0:
                assert time.monotonic() < deadline, "the long job never started"
                time.sleep(0.05)
            for _ in range(5):
                health_within(client)
                time.sleep(0.1)
            response = long.result(30)
        assert response.status_code == 504
        assert response.json() == {"error": "The request ran past the server's limit of 2 s and was cancelled; ask "
                                            "for less work (fewer forwards, a smaller image) or raise --timeout."}
        deadline = time.monotonic() + 5
        while health_within(client)["running"]:
            assert time.monotonic() < deadline, "the cancelled job kept its worker"
            time.sleep(0.05)
        assert client.post("/predict", content=png(IMAGE), headers={"content-type": "image/png"}).status_code == 200


def test_a_client_that_leaves_cancels_its_work():
    app = create_app(explainer(max_forwards=10**6), workers=1, timeout=60.0)
    with Live(app) as live, httpx.Client(base_url=live.url, timeout=10) as client:
        body = json.dumps({"image": _b64(png(IMAGE)), "method": "rise", "params": {"n": 300_000}}).encode()
        connection = half_sent(live.url, "/explain", len(body), "application/json")
        connection.sendall(body)
        deadline = time.monotonic() + 10
        while health_within(client)["running"] == 0:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        connection.close()
        deadline = time.monotonic() + 5
        while health_within(client)["running"]:
            assert time.monotonic() < deadline, "the work went on after its client left"
            time.sleep(0.05)


class Counted:
    """An explainer that counts the explain calls the server's batches make."""

    def __init__(self, explainer):
        self.explainer, self.explains = explainer, 0

    def __getattr__(self, name):
        return getattr(self.explainer, name)

    def explain(self, *args, **kwargs):
        self.explains += 1
        return self.explainer.explain(*args, **kwargs)


def test_targets_of_a_method_run_once_per_target_are_counted_before_queueing():
    """SmoothGrad (n=50, once per target) on 40 classes under --max-forwards 1000: target all (40 x 50) and top30
    are 413 before any batch runs, naming the targets; top3 (150) and Score-CAM on all (one run for every
    target) are served."""
    counted = Counted(onnxplain.Explainer(tiny(classes=40), quiet=True, max_forwards=1000))
    app = create_app(counted, workers=1)
    image = _b64(png(IMAGE))
    with Live(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        for target, total in (("all", "2,000"), ("top30", "1,500")):
            refused = client.post("/explain", json={"image": image, "method": "smoothgrad", "target": target,
                                                    "params": {"n": 50}})
            assert refused.status_code == 413
            assert refused.json() == {"error": f"Method 'smoothgrad' runs once per target: {target[3:] or 40} "
                                               f"targets of about 50 forward passes each need about {total} per "
                                               "image, over the limit of 1,000; ask for fewer targets (field "
                                               "'target'), lower n or steps (field 'params'), or raise the "
                                               "server's --max-forwards."}
        assert counted.explains == 0
        served = [client.post("/explain", json={"image": image, "method": method, "target": target,
                                                "params": params})
                  for method, target, params in (("smoothgrad", "top3", {"n": 50}), ("score-cam", "all", {}))]
        assert [r.status_code for r in served] == [200, 200], [r.text for r in served]
        assert counted.explains == 2


def closed_within(client: socket.socket, seconds: float, trickle: bytes = b"") -> float:
    """The time (monotonic) the server closes `client`, waiting at most `seconds`, sending one byte of `trickle`
    every 0.1 s meanwhile."""
    start = time.monotonic()
    for byte in [trickle[i:i + 1] for i in range(len(trickle))] or [b""] * int(seconds * 10):
        if select.select([client], [], [], 0.1)[0]:
            try:
                if client.recv(65536) == b"":
                    return time.monotonic()
            except ConnectionResetError:
                return time.monotonic()
        try:
            client.sendall(byte)
        except OSError:
            return time.monotonic()
        assert time.monotonic() - start < seconds, "the server kept the slow connection open"
    raise AssertionError("the server kept the slow connection open")


def test_a_head_sent_slowly_is_closed_at_header_timeout_while_others_are_served():
    """Half a request head then silence, and a head trickled a byte every 0.1 s: both connections are closed at
    --header-timeout (0.5 s, plus slack), with nothing answered; /health and /predict on other connections are
    served meanwhile; a keep-alive connection idle past the timeout between two requests (its second head sent
    in two parts) is not cut; a head still incomplete past 64 KiB is uvicorn's 400."""
    app = create_app(explainer(), header_timeout=0.5)
    assert app.state.config.header_timeout == 0.5
    with Live(app) as live, httpx.Client(base_url=live.url, timeout=10) as client:
        host, port = live.url.removeprefix("http://").split(":")
        head = b"GET /health HTTP/1.1\r\nHost: x\r\n"
        opened = time.monotonic()
        silent = socket.create_connection((host, int(port)), timeout=10)
        silent.sendall(head)
        assert health_within(client)["status"] == "ok"
        ok = client.post("/predict", content=png(IMAGE), headers={"content-type": "image/png"})
        assert ok.status_code == 200 and len(ok.json()["top"]) == 3
        assert 0.45 < closed_within(silent, 2.0) - opened < 1.5
        opened = time.monotonic()
        trickled = socket.create_connection((host, int(port)), timeout=10)
        assert 0.45 < closed_within(trickled, 2.0, head + b"X-Slow: " + b"a" * 100) - opened < 1.5

        alive = socket.create_connection((host, int(port)), timeout=10)
        alive.sendall(head + b"\r\n")
        assert answer(alive)[0] == 200
        time.sleep(0.8)
        alive.sendall(head)
        time.sleep(0.3)
        alive.sendall(b"\r\n")
        status, body = answer(alive)
        assert status == 200 and body["status"] == "ok"
        alive.close()

        big = socket.create_connection((host, int(port)), timeout=10)
        big.sendall(head + b"X-Big: " + b"a" * 70_000)  # still incomplete past 64 KiB
        assert big.recv(65536).startswith(b"HTTP/1.1 400 ")
        big.close()
        silent.close(), trickled.close()


def test_a_connection_closed_at_header_timeout_is_logged_and_counted(caplog):
    """Each connection closed at --header-timeout (0.5 s) logs one warning on the server's logger naming the
    client's address and the seconds waited, and counts in onnxplain_header_timeouts_total; a complete request
    counts nothing."""
    app = create_app(explainer(), header_timeout=0.5)
    caplog.set_level(logging.WARNING, logger="onnxplain.serve")
    with Live(app) as live, httpx.Client(base_url=live.url, timeout=10) as client:
        host, port = live.url.removeprefix("http://").split(":")
        assert "onnxplain_header_timeouts_total 0.0" in client.get("/metrics").text
        slow = []
        for _ in range(2):
            slow.append(socket.create_connection((host, int(port)), timeout=10))
            slow[-1].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for connection in slow:
            closed_within(connection, 2.0)
        assert health_within(client)["status"] == "ok"
        assert "onnxplain_header_timeouts_total 2.0" in client.get("/metrics").text
    lines = [r for r in caplog.records if r.name == "onnxplain.serve" and "request head" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING] * 2
    addresses = sorted(f"127.0.0.1:{connection.getsockname()[1]}" for connection in slow)
    waited = []
    for record in lines:
        found = re.fullmatch(r"Closed the connection from (\S+): its request head was not complete after "
                             r"(\d+\.\d) s \(--header-timeout 0\.5 s\)\.", record.getMessage())
        assert found, record.getMessage()
        waited.append((found.group(1), float(found.group(2))))
    assert sorted(address for address, _ in waited) == addresses
    assert all(0.5 <= seconds < 1.5 for _, seconds in waited)
    for connection in slow:
        connection.close()


def test_serve_command_gives_uvicorn_the_header_timeout(monkeypatch, tmp_path):
    """`onnxplain serve --header-timeout 0.7` runs uvicorn with the closing protocol at 0.7 s and the 64 KiB
    head bound."""
    from click.testing import CliRunner

    from onnxplain.cli import main
    from onnxplain.serve.connection import HeaderTimeout

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **settings: seen.update(settings, app=app))
    (tmp_path / "tiny.onnx").write_bytes(tiny())
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "tiny.onnx"), "--header-timeout", "0.7"])
    assert result.exit_code == 0, result.output
    assert issubclass(seen["http"], HeaderTimeout) and seen["http"].header_timeout == 0.7
    assert seen["http"].closed is seen["app"].state.serve.metrics.header_timeouts
    assert seen["app"].state.config.header_timeout == 0.7 and seen["h11_max_incomplete_event_size"] == 65536


def _b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode()


@pytest.fixture(autouse=True)
def _bounded():
    start = time.monotonic()
    yield
    assert time.monotonic() - start < 90
