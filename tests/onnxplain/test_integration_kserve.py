"""onnxplain.integrations.kserve on the real kserve package: the model served by kserve's own REST server
(uvicorn on loopback) and called with kserve's REST client: V1 predict and explain, V2 infer with the maps as
outputs, user errors as 400."""
from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

kserve = pytest.importorskip("kserve", reason="needs kserve: pip install onnxplain[kserve]")

import onnxplain  # noqa: E402
from test_serve import CATS, CHELSEA, LiveServer  # noqa: E402

NAME = "effnet"


@pytest.fixture(scope="module")
def model(effnet):
    from onnxplain.integrations.kserve import ExplainerModel
    model = ExplainerModel(NAME, str(effnet))
    model.load()
    return model


@pytest.fixture(scope="module")
def url(model):
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    repository = ModelRepository()
    repository.update(model)
    RESTServer("kserve.model_server:app", DataPlane(repository), ModelRepositoryExtension(repository),
               0).create_application()  # registers kserve's routes on its module-level FastAPI app
    from kserve.model_server import app
    with LiveServer(without_lifespan(app)) as live:
        yield live.url


def without_lifespan(app):
    """The app with its lifespan answered here (kserve's waits for a ModelServer that this test does not run)."""
    async def wrapped(scope, receive, send):
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    return wrapped


def client(protocol: str):
    from kserve.inference_client import InferenceRESTClient, RESTConfig
    return InferenceRESTClient(RESTConfig(protocol=protocol, retries=0, timeout=120))


def test_v1_predict_and_explain(url, effnet):
    image = base64.b64encode(CHELSEA.read_bytes()).decode()
    answer = asyncio.run(client("v1").infer(url, {"instances": [{"b64": image}], "parameters": {"top": 2}},
                                            model_name=NAME))
    assert len(answer["predictions"][0]) == 2 and answer["predictions"][0][0]["name"] in CATS
    data = {"instances": [{"b64": image}], "parameters": {"method": "eigen-cam", "raw": True}}
    (result,) = asyncio.run(client("v1").explain(url, NAME, data))["explanations"]
    own = onnxplain.load(effnet, quiet=True).explain(CHELSEA.read_bytes(), method="eigen-cam")[0].raw
    np.testing.assert_allclose(np.array(result["explanations"][0]["raw"]), own, atol=1e-5)


def test_user_errors_are_invalid_input(url):
    from httpx import HTTPStatusError
    with pytest.raises(HTTPStatusError) as caught:
        asyncio.run(client("v1").explain(url, NAME, {"instances": [{"b64": "aGVsbG8="}],
                                                     "parameters": {"method": "nope"}}))
    assert caught.value.response.status_code == 400 and "nope" in caught.value.response.json()["error"]


# ---- V2 infer ---------------------------------------------------------------------------------------
def v2_request(images: list, binary: bool = False, **parameters):
    from kserve import InferInput, InferRequest
    tensor = InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=binary)
    return InferRequest(model_name=NAME, infer_inputs=[tensor], request_id="r7", parameters=parameters or None)


def test_v2_infer_base64_with_the_kserve_client(url, effnet_explainer):
    """Two base64 images through kserve's REST server: the logits and the eigen-cam maps (top2) as FP32 outputs
    with onnxplain serve's names and shapes, equal to the Explainer's."""
    image = CHELSEA.read_bytes()
    request = v2_request([base64.b64encode(image).decode()] * 2, method="eigen-cam", target="top2")
    answer = asyncio.run(client("v2").infer(url, request, model_name=NAME))
    outputs = {o.name: o for o in answer.outputs}
    logits = effnet_explainer.model.outputs[0].name
    assert answer.id == "r7" and list(outputs) == [logits, "map", "target"]
    assert outputs[logits].datatype == "FP32" and outputs["map"].datatype == "FP32"
    scores = effnet_explainer.forward(effnet_explainer.prepare(image))[logits]
    np.testing.assert_allclose(outputs[logits].as_numpy(), np.repeat(scores.reshape(1, -1), 2, 0), atol=1e-5)
    own = effnet_explainer.explain_bytes(image, method="eigen-cam", target="top2")
    maps = outputs["map"].as_numpy()
    assert maps.shape == (2, 2) + own[0].raw.shape
    for row in maps:
        np.testing.assert_allclose(row, np.stack([a.raw for a in own]), atol=1e-5)
    assert outputs["target"].as_numpy().tolist() == [[a.target["index"] for a in own]] * 2


def test_v2_infer_scores_only_and_metadata(url, effnet_explainer):
    """Without a method the answer is the model output alone; V2 metadata lists the BYTES input and the outputs."""
    image = base64.b64encode(CHELSEA.read_bytes()).decode()
    (scores,) = asyncio.run(client("v2").infer(url, v2_request([image]), model_name=NAME)).outputs
    assert scores.shape == [1, 1000] and int(np.argmax(scores.as_numpy())) == effnet_explainer.predict(
        CHELSEA.read_bytes(), top=1)[0].as_dict()["top"][0]["index"]
    import httpx
    meta = httpx.get(f"{url}/v2/models/{NAME}", timeout=30).json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == [effnet_explainer.model.outputs[0].name, "map", "target"]


@pytest.fixture(scope="module")
def grpc(model):
    """kserve's own gRPC servicer for the model on a 127.0.0.1 port, in a thread with its own event loop; yields
    the address and a function that runs a coroutine on that loop (grpc.aio wants one loop for server and
    client)."""
    import threading

    from grpc import aio
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension

    repository = ModelRepository()
    repository.update(model)
    loop, started, server = asyncio.new_event_loop(), threading.Event(), {}

    async def run() -> None:
        server["grpc"] = aio.server()
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(DataPlane(repository), ModelRepositoryExtension(repository)), server["grpc"])
        server["port"] = server["grpc"].add_insecure_port("127.0.0.1:0")
        await server["grpc"].start()
        started.set()
        await server["grpc"].wait_for_termination()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(30), "the gRPC server did not start"
    def run_on_loop(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(120)

    yield f"127.0.0.1:{server['port']}", run_on_loop
    stopping = asyncio.run_coroutine_threadsafe(server["grpc"].stop(0), loop)  # no grace: nothing is in flight
    try:
        stopping.result(30)
    except TimeoutError:  # grpc.aio may not return from stop() on a loaded machine; the thread is a daemon
        pass
    thread.join(10)


def test_v2_raw_bytes_over_kserve_grpc(grpc, effnet_explainer):
    """The JPEG's raw bytes as the BYTES element, through kserve's gRPC servicer and client: the map for class
    281 (an int parameter) equals the Explainer's."""
    from kserve.inference_client import InferenceGRPCClient

    image = CHELSEA.read_bytes()
    request = v2_request([image], binary=True, method="eigen-cam", target=281)

    address, run = grpc

    async def infer():
        return await InferenceGRPCClient(address, timeout=120, retries=0).infer(request)

    outputs = {o.name: o for o in run(infer()).outputs}
    assert outputs["target"].as_numpy().tolist() == [[281]] and outputs["map"].shape == [1, 1, 7, 7]
    own = effnet_explainer.explain_bytes(image, method="eigen-cam", target=281)[0].raw
    np.testing.assert_allclose(outputs["map"].as_numpy()[0, 0], own, atol=1e-5)


def test_v2_user_errors_are_invalid_input(url):
    from httpx import HTTPStatusError
    image = base64.b64encode(CHELSEA.read_bytes()).decode()
    for request, words in ((v2_request([image], method="nope"), "nope"),
                           (v2_request(["@@not base64"]), "not base64"),
                           (v2_request([base64.b64encode(b"hello").decode()]), "decode")):
        with pytest.raises(HTTPStatusError) as caught:
            asyncio.run(client("v2").infer(url, request, model_name=NAME))
        assert caught.value.response.status_code == 400 and words in caught.value.response.json()["error"]
