"""KServe V1, Open Inference Protocol V2, readiness, /metrics and the bearer token of `onnxplain serve`, on the
bundled EfficientNet-Lite0 under uvicorn on loopback, driven by kserve's own REST client where it has one.

Maps are compared with the Explainer's own (tolerance 1e-5: JSON carries float32 values as decimal text).
"""
from __future__ import annotations

import asyncio
import base64
import threading

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import onnxplain
from onnxplain.serve import create_app
from onnxplain.serve.auth import TOKEN_ENV, token_from
from test_serve import CATS, CHELSEA, LiveServer, assert_refused, wait_ready

kserve = pytest.importorskip("kserve", reason="the KServe client tests need kserve (pip install onnxplain[kserve])")
NAME = "effnet"


@pytest.fixture(scope="module")
def chelsea() -> bytes:
    return CHELSEA.read_bytes()


@pytest.fixture(scope="module")
def url(effnet_explainer):
    with LiveServer(create_app(effnet_explainer, name=NAME)) as live:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            wait_ready(c)
        yield live.url


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def rest_client(protocol: str):
    from kserve.inference_client import InferenceRESTClient, RESTConfig
    return InferenceRESTClient(RESTConfig(protocol=protocol, retries=0, timeout=120))


# ---- KServe V1 -----------------------------------------------------------------------------------
def test_v1_models_and_model(client):
    assert client.get("/v1/models").json() == {"models": [NAME]}
    assert client.get(f"/v1/models/{NAME}").json() == {"name": NAME, "ready": True}
    assert_refused(client.get("/v1/models/other"), 404, "model 'other' is not served here", NAME)


def test_v1_predict_with_the_kserve_client(url, chelsea, effnet_explainer):
    answer = asyncio.run(rest_client("v1").infer(url, {"instances": [{"b64": b64(chelsea)}, {"b64": b64(chelsea)}],
                                                       "parameters": {"top": 3}}, model_name=NAME))
    own = effnet_explainer.predict(chelsea, top=3)[0].as_dict()["top"]
    assert len(answer["predictions"]) == 2 and all(len(p) == 3 for p in answer["predictions"])
    for got in answer["predictions"]:
        assert [c["index"] for c in got] == [c["index"] for c in own] and got[0]["name"] in CATS
        assert np.allclose([c["score"] for c in got], [c["score"] for c in own], atol=1e-5)


def test_v1_explain_with_the_kserve_client(url, chelsea, effnet_explainer):
    data = {"instances": [{"b64": b64(chelsea)}], "parameters": {"method": "eigen-cam", "raw": True}}
    answer = asyncio.run(rest_client("v1").explain(url, NAME, data))
    (result,) = answer["explanations"]
    own = effnet_explainer.explain(chelsea, method="eigen-cam")[0]
    assert result["method"] == "eigen-cam" and result["predictions"][0]["name"] in CATS
    np.testing.assert_allclose(np.array(result["explanations"][0]["raw"]), own.raw, atol=1e-5)
    assert base64.b64decode(result["explanations"][0]["overlay_png"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_v1_refusals(client, chelsea):
    assert_refused(client.post(f"/v1/models/{NAME}:predict", json={"instances": []}), 422, '"instances"')
    assert_refused(client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"path": "/etc/passwd"}]}), 422,
                   '{"b64": "..."}')
    assert_refused(client.post(f"/v1/models/{NAME}:explain", json={"instances": [{"b64": "!!"}]}), 400, "base64")
    assert_refused(client.post(f"/v1/models/{NAME}:explain", json={"instances": [{"b64": b64(chelsea)}],
                                                                    "parameters": {"method": "nope"}}), 400, "nope")
    assert_refused(client.post(f"/v1/models/{NAME}:explain", content=b"[1]",
                               headers={"content-type": "application/json"}), 422, "object")


# ---- Open Inference Protocol V2 -----------------------------------------------------------------
def test_v2_health_and_metadata(client, effnet_explainer):
    assert client.get("/v2").json()["name"] == "onnxplain"
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == [effnet_explainer.model.outputs[0].name, "map", "target"]
    assert_refused(client.get("/v2/models/other/ready"), 404, "other")


def test_v2_infer_binary_bytes_with_the_kserve_client(url, chelsea, effnet_explainer):
    """kserve's client sends the image as raw bytes (binary data extension); the answer holds the scores and
    the eigen-cam map with shapes, equal to the Explainer's."""
    from kserve import InferInput, InferRequest

    image = InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([chelsea], dtype=object), binary_data=True)
    request = InferRequest(model_name=NAME, infer_inputs=[image], request_id="r1",
                           parameters={"method": "eigen-cam", "target": "top2"})
    answer = asyncio.run(rest_client("v2").infer(url, request, model_name=NAME))
    outputs = {o.name: o for o in answer.outputs}
    logits = effnet_explainer.model.outputs[0].name
    assert answer.id == "r1" and set(outputs) == {logits, "map", "target"}
    batch = effnet_explainer.prepare(chelsea)
    np.testing.assert_allclose(outputs[logits].as_numpy(), effnet_explainer.forward(batch)[logits].reshape(1, -1),
                               atol=1e-5)
    own = effnet_explainer.explain(chelsea, method="eigen-cam", target="top2")
    maps = outputs["map"].as_numpy()
    assert maps.shape == (1, 2) + own[0].raw.shape and outputs["target"].datatype == "INT64"
    np.testing.assert_allclose(maps[0], np.stack([a.raw for a in own]), atol=1e-5)
    assert outputs["target"].as_numpy().tolist() == [[a.target["index"] for a in own]]


def test_v2_infer_json_base64_and_output_filter(client, chelsea):
    body = {"inputs": [{"name": "image", "shape": [2, 1], "datatype": "BYTES", "data": [[b64(chelsea)],
                                                                                        [b64(chelsea)]]}],
            "outputs": [{"name": "map"}], "parameters": {"method": "cam"}}
    answer = client.post(f"/v2/models/{NAME}/infer", json=body).json()
    (out,) = answer["outputs"]
    assert out["name"] == "map" and out["datatype"] == "FP32" and out["shape"][:2] == [2, 1]
    assert len(out["data"]) == int(np.prod(out["shape"]))
    plain = client.post(f"/v2/models/{NAME}/infer", json={"inputs": [{"name": "image", "shape": [1],
                                                                      "datatype": "BYTES", "data": [b64(chelsea)]}]})
    (scores,) = plain.json()["outputs"]
    assert scores["shape"] == [1, 1000] and scores["datatype"] == "FP32"


def test_v2_refusals(client, chelsea):
    path = f"/v2/models/{NAME}/infer"
    one = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(chelsea)]}
    assert_refused(client.post(path, json={"inputs": [{**one, "datatype": "FP32"}]}), 400, "datatype BYTES")
    assert_refused(client.post(path, json={"inputs": [{**one, "shape": [3]}]}), 400, "does not match its 1 images")
    assert_refused(client.post(path, json={"inputs": [{**one, "data": ["@@"]}]}), 400, "not base64")
    assert_refused(client.post(path, json={"inputs": [one], "parameters": {"method": "nope"}}), 400, "nope")
    assert_refused(client.post(path, content=b"{}", headers={"inference-header-content-length": "99"}), 400,
                   "inference-header-content-length")


# ---- readiness, metrics, token --------------------------------------------------------------------
def test_not_ready_until_the_warmup_methods_ran(effnet_explainer, chelsea):
    """/readyz and /v2/health/ready answer 503 while warm-up runs (held here), 200 after; /ping always."""
    app = create_app(effnet_explainer, warmup=("saliency",))
    readiness, release = app.state.serve.readiness, threading.Event()
    warm = readiness.warm
    readiness.warm = lambda: (release.wait(60), warm())
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        assert c.get("/ping").json() == {"ping": "pong"}
        assert_refused(c.get("/readyz"), 503, "warming up")
        assert_refused(c.get("/v2/health/ready"), 503, "warming up")
        assert c.get("/v2/health/live").status_code == 200
        release.set()
        wait_ready(c, 120)
        assert c.get("/readyz").json() == {"ready": True, "warmed": ["saliency"]}
        assert effnet_explainer._module is not None  # the gradient method's torch module was built by the warm-up


def test_unknown_warmup_method_is_refused_at_start(effnet_explainer):
    with pytest.raises(onnxplain.errors.UserError, match="nope"):
        create_app(effnet_explainer, warmup=("nope",))


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_refusals_and_batches(effnet_explainer, chelsea):
    """Each app has its own registry: counts start at zero and follow this app's requests only."""
    with LiveServer(create_app(effnet_explainer, name=NAME)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        for _ in range(3):
            assert c.post(f"/v1/models/{NAME}:predict", json={"instances": [b64(chelsea)]}).status_code == 200
        c.get("/v1/models/other")
        text = c.get("/metrics").text
    got = samples(text)
    route = "/v1/models/{name}:predict"
    assert got[("onnxplain_requests_total", (("route", route), ("status", "200"), ("verb", "POST")))] == 3
    assert got[("onnxplain_request_seconds_count", (("route", route), ("verb", "POST")))] == 3
    assert got[("onnxplain_refusals_total", (("reason", "not_found"), ("route", "/v1/models/{name}")))] == 1
    predicted = sum(v for (n, labels), v in got.items()
                    if n == "onnxplain_batch_size_sum" and ("kind", "predict") in labels)
    assert predicted == 3  # three sequential requests; the warm-up runs outside the batcher
    assert got[("onnxplain_queue_length", ())] == 0


def test_bearer_token(effnet_explainer, chelsea, monkeypatch):
    with LiveServer(create_app(effnet_explainer, name=NAME, token="s3cret")) as live, \
            httpx.Client(base_url=live.url, timeout=60) as c:
        for path in ("/health", "/readyz", "/ping", "/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code in (200, 503), path
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            refused = c.post("/predict", content=chelsea, headers={"content-type": "image/jpeg", **headers})
            assert_refused(refused, 401, "Authorization: Bearer TOKEN")
            assert refused.headers["www-authenticate"] == "Bearer"
        assert_refused(c.get("/metrics"), 401, "bearer token")
        ok = c.post("/predict", content=chelsea, headers={"content-type": "image/jpeg",
                                                          "Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["top"][0]["name"] in CATS
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert token_from(None) == "from-env" and token_from("given") == "given"
    monkeypatch.setenv(TOKEN_ENV, "")
    assert token_from(None) is None
