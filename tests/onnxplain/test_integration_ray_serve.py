"""onnxplain.integrations.ray_serve on the real Ray Serve: a local Ray (2 CPUs, module-scoped), the deployment
behind Serve's HTTP proxy on 127.0.0.1, concurrent requests with httpx. Maps equal Explainer.explain_bytes within
1e-5 (JSON carries float32 as decimal text), concurrent requests really form batches, user errors are 400 JSON."""
from __future__ import annotations

import asyncio
import base64
import os
import socket
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs Ray Serve: pip install onnxplain[ray-serve]")
serve = pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install onnxplain[ray-serve]")

import onnxplain  # noqa: E402
from test_serve import CATS, CHELSEA, assert_refused  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BATCH = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(effnet):
    from onnxplain.integrations.ray_serve import app

    # the replica imports onnxplain from this checkout, as the test process does
    path = os.pathsep.join([str(ROOT), str(ROOT / "converters"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app(str(effnet), max_batch_size=BATCH, batch_wait_timeout_s=0.5, num_cpus=0.5),
                  name="onnxplain", route_prefix="/effnet")
        yield f"http://127.0.0.1:{port}/effnet"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def explainer(effnet):
    return onnxplain.load(effnet, quiet=True)


def images() -> list[bytes]:
    """Chelsea and Chelsea mirrored: different maps, so an answer sent to the wrong request shows."""
    chelsea = CHELSEA.read_bytes()
    mirrored = cv2.imencode(".png", cv2.flip(cv2.imdecode(np.frombuffer(chelsea, np.uint8), cv2.IMREAD_COLOR), 1))
    return [chelsea, mirrored[1].tobytes()]


async def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(client.post("/explain", json=body) for body in bodies))


def test_concurrent_explains_are_batched_and_equal_the_explainer(url, explainer):
    photos = images() * (BATCH // 2)
    bodies = [{"image": base64.b64encode(p).decode(), "method": "eigen-cam", "raw": True, "top": 2} for p in photos]
    answers = asyncio.run(post_all(url, bodies))
    for photo, answer in zip(photos, answers):
        assert answer.status_code == 200, answer.text
        (entry,) = answer.json()["explanations"]
        own = explainer.explain_bytes(photo, method="eigen-cam")[0]
        assert entry["target"]["index"] == own.target["index"]
        np.testing.assert_allclose(np.array(entry["raw"]), own.raw, atol=1e-5)
        assert len(answer.json()["predictions"]) == 2
    sizes = {int(k): v for k, v in httpx.get(f"{url}/health", timeout=30).json()["batch_sizes"].items()}
    assert sum(k * v for k, v in sizes.items()) >= len(bodies) and max(sizes) > 1, sizes


def test_predict(url, explainer):
    image = CHELSEA.read_bytes()
    answer = httpx.post(f"{url}/predict", json={"image": base64.b64encode(image).decode(), "top": 3}, timeout=60)
    top = answer.json()["top"]
    assert [c["index"] for c in top] == [c["index"] for c in explainer.predict(image, top=3)[0].as_dict()["top"]]
    assert top[0]["name"] in CATS


def test_user_errors_are_400_json(url):
    image = base64.b64encode(CHELSEA.read_bytes()).decode()
    with httpx.Client(base_url=url, timeout=60) as client:
        assert_refused(client.post("/explain", json={"image": image, "method": "nope"}), 400, "nope")
        assert_refused(client.post("/explain", json={"image": base64.b64encode(b"hello").decode(),
                                                     "method": "eigen-cam"}), 400, "decode")
        assert_refused(client.post("/predict", json={"image": image, "colour": 1}), 422, "colour")
        assert_refused(client.get("/nowhere"), 404, "POST /explain")


def test_build_reads_serve_run_arguments(effnet):
    """`serve run ...:build key=value` passes strings: numbers are converted, a missing model is a user error."""
    from onnxplain.errors import UserError
    from onnxplain.integrations.ray_serve import build

    application = build({"model_path": str(effnet), "max_batch_size": "3", "num_cpus": "0.5"})
    deployment = application._bound_deployment
    assert deployment.init_args == (str(effnet),) and deployment.init_kwargs["max_batch_size"] == 3
    assert deployment.ray_actor_options["num_cpus"] == 0.5 and deployment.max_ongoing_requests == 6
    with pytest.raises(UserError, match="model_path=MODEL.onnx"):
        build({"max_batch_size": "3"})
