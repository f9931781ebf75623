"""The HTTP server on the bundled EfficientNet-Lite0: endpoints, batching, limits and every refusal.

Each server is uvicorn in a daemon thread on a free loopback port, stopped at the end of its test module or after
at most LIFETIME seconds.
"""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields as dataclass_fields
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import uvicorn

import onnxplain
from onnxplain.errors import UserError
from onnxplain.cli import main
from onnxplain.serve import (EXPLAIN, PREDICT, ExplainJob, HTTPError, PredictJob, ServeConfig, create_app,
                             openapi_schema)

CHELSEA = Path(__file__).resolve().parents[2] / "models" / "chelsea.jpg"
CATS = {"tiger cat", "Egyptian cat", "tabby"}
LIFETIME = 120.0  # seconds a test server may live at most


class LiveServer:
    """An ASGI app under uvicorn in a daemon thread on a free 127.0.0.1 port, with a bounded lifetime."""

    def __init__(self, app, lifetime: float = LIFETIME):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.timer = threading.Timer(lifetime, self.stop)
        self.timer.daemon = True

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        self.timer.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.stop()
        self.thread.join(10)
        self.socket.close()


@pytest.fixture(scope="module")
def explainer(effnet):
    return onnxplain.load(effnet, quiet=True)


@pytest.fixture(scope="module")
def url(explainer):
    with LiveServer(create_app(explainer, max_body=1_000_000)) as live:
        yield live.url


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def chelsea() -> bytes:
    return CHELSEA.read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def top1(answer: dict) -> str:
    return answer["top"][0]["name"]


def assert_refused(response, status: int, *words: str) -> None:
    """A refusal: the status and {"error": one sentence} naming the problem."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and body["error"].endswith("."), body
    for word in words:
        assert word.lower() in body["error"].lower(), body["error"]


def wait_ready(client, timeout: float = 60) -> None:
    """Wait until /readyz answers 200 (the warm-up has run)."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.05)


# ---- endpoints ---------------------------------------------------------------------------------
def test_health_and_openapi(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["device"] == "cpu" and health["queue_size"] == 64
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/health", "/model", "/predict", "/explain", "/openapi.json"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/explain"]["post"]["requestBody"]["content"]
    assert_refused(client.get("/nowhere"), 404, "not found")
    assert_refused(client.get("/predict"), 405)


def test_openapi_documents_exactly_the_served_routes(explainer, client):
    """The (path, verb) pairs of the app's routes equal those of its OpenAPI document; each documented GET
    answers 200 live and each documented POST exists (an empty JSON body is 422, not 404 or 405)."""
    served = {(route.path, verb) for route in create_app(explainer).routes for verb in route.methods - {"HEAD"}}
    document = client.get("/openapi.json").json()
    documented = {(path, verb.upper()) for path, operations in document["paths"].items() for verb in operations}
    assert served == documented
    assert document == json.loads(json.dumps(openapi_schema()))  # the live document is the generated one
    wait_ready(client)
    name = client.get("/v1/models").json()["models"][0]
    for path, verb in sorted(documented):
        path = path.replace("{name}", name)
        if verb == "GET":
            assert client.get(path).status_code == 200, path
        else:
            assert_refused(client.post(path, json={}), 422, "image")


def form_value(value) -> str:
    """A JSON value as a multipart form sends it."""
    return json.dumps(value) if isinstance(value, (bool, dict)) else str(value)


def test_each_documented_request_field_is_accepted_by_the_live_route(client, explainer, chelsea):
    """For every POST route and every field its JSON schema documents, a request with that field set to its
    documented example (the model's own output name for `output`) is served, as JSON and as multipart; the
    route's list of accepted fields (in its unknown-field refusal) is exactly the documented one."""
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    own = {"output": explainer.model.outputs[0].name}
    for path, operations in document["paths"].items():
        if "post" not in operations:
            continue
        content = operations["post"]["requestBody"]["content"]
        if "multipart/form-data" not in content:  # KServe V1 / V2 bodies: test_serve_protocols.py
            continue
        as_json = schemas[content["application/json"]["schema"]["$ref"].split("/")[-1]]
        as_form = schemas[content["multipart/form-data"]["schema"]["$ref"].split("/")[-1]]
        assert set(as_json["properties"]) == set(as_form["properties"]) and as_json["required"] == as_form["required"]
        names = [n for n in as_json["properties"] if n != "image"]

        def example(name: str):
            prop = as_json["properties"][name]
            return own.get(name, (prop.get("examples") or [prop.get("default")])[0])

        required = {n: example(n) for n in as_json["required"] if n != "image"}
        for name in names:
            fields = {**required, name: example(name)}
            assert fields[name] is not None, f"{path} documents '{name}' without an example"
            answer = client.post(path, json={"image": b64(chelsea), **fields})
            assert answer.status_code == 200, (path, name, answer.text)
            answer = client.post(path, files={"image": ("chelsea.jpg", chelsea, "image/jpeg")},
                                 data={k: form_value(v) for k, v in fields.items()})
            assert answer.status_code == 200, (path, name, answer.text)
        refused = client.post(path, json={"image": b64(chelsea), **required, "zzz": 1})
        assert_refused(refused, 422, f"unknown field 'zzz'; this endpoint takes {', '.join(['image'] + names)}.")


def test_request_models_are_the_jobs_and_follow_the_config():
    """Each request model's fields are its job's dataclass fields; the documented and enforced bound of `top`
    is the app's max_top."""
    assert PREDICT.names == tuple(f.name for f in dataclass_fields(PredictJob))
    assert set(EXPLAIN.names) == {f.name for f in dataclass_fields(ExplainJob)}
    config = ServeConfig(max_top=7)
    top = openapi_schema(config=config)["components"]["schemas"]["PredictJson"]["properties"]["top"]
    assert (top["minimum"], top["maximum"], top["default"]) == (1, 7, 5)
    assert PREDICT.parse({"top": "7"}, b"x", config).top == 7
    with pytest.raises(HTTPError, match=r"^Field 'top' must be an integer from 1 to 7\.$"):
        PREDICT.parse({"top": 8}, b"x", config)


def test_model(client, explainer):
    info = client.get("/model").json()
    assert [i["name"] for i in info["inputs"]] == [i.name for i in explainer.model.inputs]
    assert info["outputs"][0]["shape"][-1] == 1000 and info["labels"] == 1000
    names = [t["name"] for t in info["spatial_layers"]]
    assert info["auto_layer"] in names and len(names) == len(explainer.model.spatial_layers)
    methods = {m["name"]: m for m in info["methods"]}
    assert methods["eigen-cam"]["engine"] == "ort" and "params" in methods["eigen-cam"]


def test_predict_multipart_and_base64(client, chelsea):
    multipart = client.post("/predict", files={"image": ("chelsea.jpg", chelsea, "image/jpeg")}, data={"top": "3"})
    assert multipart.status_code == 200, multipart.text
    assert len(multipart.json()["top"]) == 3 and top1(multipart.json()) in CATS
    as_json = client.post("/predict", json={"image": b64(chelsea)})
    assert as_json.status_code == 200 and len(as_json.json()["top"]) == 5
    raw = client.post("/predict?top=1", content=chelsea, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200 and len(raw.json()["top"]) == 1
    # the same image answers the same, to float32 round-off, whichever way it came
    first, second = as_json.json()["top"][:3], multipart.json()["top"]
    assert [e["index"] for e in first] == [e["index"] for e in second]
    assert [e["score"] for e in first] == pytest.approx([e["score"] for e in second], rel=1e-5)


def test_concurrent_predicts_run_as_batches(explainer, chelsea):
    """Eight requests arriving together on one worker with a 50 ms window share forwards (tolerance: exact)."""
    with LiveServer(create_app(explainer, workers=1, max_batch=8, batch_wait=0.05)) as live:
        with httpx.Client(base_url=live.url, timeout=60) as c, ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: c.post("/predict", json={"image": b64(chelsea), "top": 1}), range(8)))
            health = c.get("/health").json()
    assert [a.status_code for a in answers] == [200] * 8
    assert {top1(a.json()) for a in answers} <= CATS
    assert health["jobs"] == 8 and health["batches"] < 8


def test_explain_eigen_cam(client, explainer, chelsea):
    answer = client.post("/explain", files={"image": ("chelsea.jpg", chelsea, "image/jpeg")},
                         data={"method": "eigen-cam", "raw": "true", "top": "2"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["method"] == "eigen-cam" and body["layer"] == explainer.model.auto_layer()[0]
    assert len(body["predictions"]) == 2 and body["predictions"][0]["name"] in CATS
    [entry] = body["explanations"]
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(entry["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imdecode(np.frombuffer(chelsea, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == original.shape and (entry["height"], entry["width"]) == original.shape[:2]
    raw = np.array(entry["raw"], np.float32)
    layer_hw = explainer.model.spatial_info(body["layer"]).hw
    assert list(raw.shape) == entry["raw_shape"] == list(layer_hw)
    # the server's map equals explain_bytes on the same bytes (tolerance: float32 round-off)
    [direct] = explainer.explain_bytes(chelsea, method="eigen-cam")
    np.testing.assert_allclose(raw, direct.raw, rtol=1e-4, atol=1e-5)


def test_explain_json_top3_and_params(client, chelsea):
    answer = client.post("/explain", json={"image": b64(chelsea), "method": "eigen-cam", "target": "top3",
                                           "params": {"relu": False}, "alpha": 0.3, "colormap": "turbo"})
    assert answer.status_code == 200, answer.text
    entries = answer.json()["explanations"]
    assert len(entries) == 3 and "raw" not in entries[0] and entries[0]["params"] == {"relu": False}
    assert [e["target"]["index"] for e in entries] == [p["index"] for p in answer.json()["predictions"][:3]]


def test_explain_bytes_takes_bytes_only(explainer):
    with pytest.raises(UserError, match="bytes"):
        explainer.explain_bytes(str(CHELSEA), method="eigen-cam")


# ---- refusals ----------------------------------------------------------------------------------
def test_body_over_the_limit_is_413(explainer):
    body = json.dumps({"image": "A" * 20_000, "method": "eigen-cam"}).encode()
    with LiveServer(create_app(explainer, max_body=10_000)) as live, httpx.Client(base_url=live.url) as c:
        by_length = c.post("/explain", content=body, headers={"content-type": "application/json"})
        chunks = (body[i:i + 4096] for i in range(0, len(body), 4096))  # no Content-Length: counted as it streams
        streamed = c.post("/explain", content=chunks, headers={"content-type": "application/json"})
        small = c.post("/predict", json={"image": b64(b"x" * 100)})
    assert_refused(by_length, 413, "10000")
    assert "content-length" not in streamed.request.headers
    assert_refused(streamed, 413, "10000")
    assert_refused(small, 400, "decoded")


def test_bad_inputs_are_400_with_one_sentence(client, chelsea):
    upload = {"image": ("chelsea.jpg", chelsea, "image/jpeg")}
    assert_refused(client.post("/predict", files={"image": ("x.jpg", b"not an image", "image/jpeg")}), 400, "decoded")
    assert_refused(client.post("/explain", json={"image": b64(b"\x89PNG broken"), "method": "eigen-cam"}), 400,
                   "decoded")
    assert_refused(client.post("/explain", files=upload, data={"method": "eigen-kam"}), 400, "unknown method",
                   "eigen-cam")
    assert_refused(client.post("/explain", files=upload, data={"method": "eigen-cam", "layer": "no/such/tensor"}),
                   400, "no tensor named")
    assert_refused(client.post("/explain", files=upload, data={"method": "eigen-cam", "target": "5000"}), 400,
                   "out of range")
    assert_refused(client.post("/explain", files=upload, data={"method": "eigen-cam", "params": '{"nope": 1}'}),
                   400, "no parameter 'nope'")
    assert_refused(client.post("/explain", files=upload, data={"method": "eigen-cam", "colormap": "plaid"}), 400,
                   "colormap")
    assert_refused(client.post("/predict", files=upload, data={"output": "probs"}), 400, "no output named")


def test_paths_in_requests_are_never_read(client):
    """A path where the image belongs is not base64 of an image, and no file is opened."""
    assert_refused(client.post("/predict", json={"image": str(CHELSEA)}), 400, "base64")
    assert_refused(client.post("/predict", files={"image": (None, str(CHELSEA))}), 400, "base64")
    assert_refused(client.post("/predict", json={"image": b64(str(CHELSEA).encode())}), 400, "decoded")


def test_malformed_requests_are_422(client, chelsea):
    headers = {"content-type": "application/json"}
    assert_refused(client.post("/predict", content=b'{"image": ', headers=headers), 422, "json")
    assert_refused(client.post("/predict", json=["not", "an", "object"]), 422, "object")
    assert_refused(client.post("/predict", json={"top": 3}), 422, "image")
    assert_refused(client.post("/predict", json={"image": b64(chelsea), "top": "many"}), 422, "top")
    assert_refused(client.post("/predict", json={"image": b64(chelsea), "tpo": 3}), 422, "tpo")
    assert_refused(client.post("/explain", json={"image": b64(chelsea)}), 422, "method")
    assert_refused(client.post("/explain", json={"image": b64(chelsea), "method": "eigen-cam", "params": [1]}), 422,
                   "params")
    assert_refused(client.post("/explain", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}),
                   422, "multipart")
    assert_refused(client.post("/predict", content=b"hello", headers={"content-type": "text/plain"}), 415)


class Gated:
    """The explainer behind a gate: predictions wait until the test opens it, so a queue can be filled."""

    def __init__(self, explainer):
        self.explainer = explainer
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self.explainer, name)

    def predict(self, *args, **kwargs):
        assert self.gate.wait(30)
        return self.explainer.predict(*args, **kwargs)


def test_full_queue_is_503(explainer, chelsea):
    """One worker busy and a queue of one: a third and fourth request are refused at once, the first two served."""
    gated = Gated(explainer)
    body = {"image": b64(chelsea), "top": 1}
    with LiveServer(create_app(gated, workers=1, max_batch=1, queue_size=1)) as live, \
            httpx.Client(base_url=live.url, timeout=60) as c, ThreadPoolExecutor(2) as pool:

        def wait_for(key: str, value: int) -> None:
            deadline = time.monotonic() + 10
            while c.get("/health").json()[key] != value:
                assert time.monotonic() < deadline, f"{key} never reached {value}"
                time.sleep(0.01)

        first = pool.submit(c.post, "/predict", json=body)
        wait_for("running", 1)
        second = pool.submit(c.post, "/predict", json=body)
        wait_for("queued", 1)
        refused = [c.post("/predict", json=body) for _ in range(2)]
        gated.gate.set()
        served = [first.result(), second.result()]
    for response in refused:
        assert_refused(response, 503, "busy")
        assert response.headers["retry-after"] == "1"
    assert [r.status_code for r in served] == [200, 200]


def test_mounted_under_a_prefix(explainer, chelsea):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    host = Starlette(routes=[Route("/", lambda request: PlainTextResponse("host app")),
                             Mount("/xai", app=create_app(explainer))])
    with LiveServer(host) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        assert c.get("/").text == "host app"
        assert c.get("/xai/health").json()["status"] == "ok"
        assert c.get("/xai/openapi.json").json()["servers"] == [{"url": "/xai"}]
        answer = c.post("/xai/predict", files={"image": ("chelsea.jpg", chelsea, "image/jpeg")})
    assert answer.status_code == 200 and top1(answer.json()) in CATS


def test_load_40_explains_at_concurrency_8(client, chelsea):
    body = {"image": b64(chelsea), "method": "eigen-cam"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/explain", json=body), range(40)))
    assert [a.status_code for a in answers] == [200] * 40
    assert {a.json()["predictions"][0]["name"] for a in answers} <= CATS


# ---- the command -------------------------------------------------------------------------------
def test_serve_command_help_and_errors(tmp_path):
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--preset", "--labels", "--max-batch", "--max-body", "--device",
                   "--queue-size"):
        assert option in result.output
    assert "127.0.0.1" in result.output
    missing = CliRunner().invoke(main, ["serve", str(tmp_path / "missing.onnx")])
    assert missing.exit_code == 2 and "missing.onnx' does not exist; check the path.\n" in missing.output
