"""onnxplain.integrations.kserve on the real kserve package: the model served by kserve's own REST server
(uvicorn on loopback) and called with kserve's REST client: V1 predict and explain, user errors as 400."""
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
def url(effnet):
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    from onnxplain.integrations.kserve import ExplainerModel

    model = ExplainerModel(NAME, str(effnet))
    model.load()
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
