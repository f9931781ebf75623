"""Property-based fuzz (hypothesis) of what users type: the CLI's -p KEY=VALUE parameters and the server's
request fields. Whatever the input, the answer is a result or one sentence: exit 0 or 2 without a traceback,
and an HTTP status below 500 with {"error": sentence} for refusals.

The model is a tiny conv classifier (hostile_inputs.tiny) and --max-forwards is small, so any accepted input
runs in milliseconds.
"""
from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

import onnxplain
from hostile_inputs import IMAGE, png, tiny
from onnxplain.cli import main
from onnxplain.errors import UserError

METHODS = ["rise", "occlusion", "smoothgrad-fd", "score-cam", "eigen-cam", "recipro-cam", "ablation-cam"]
KEYS = ["n", "grid", "p", "seed", "score", "window", "stride", "fill", "value", "blur_sigma", "noise_level",
        "channels", "baseline", "relu", "mask", "softmax", "control_variate", "class_map", "signed", "bogus"]
TEXT = st.one_of(st.sampled_from(["0", "-1", "1e12", "2.5", "nan", "inf", "-inf", "8/0", "1/3", "16x16", "0x0",
                                  "1,2,3", "true", "none", "", " ", "x" * 300, "\u00e9", "1e400", "9" * 40]),
                 st.text(max_size=12), st.integers(-10**15, 10**15).map(str), st.floats().map(str))
JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.floats() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=6)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "m.onnx").write_bytes(tiny())
    (root / "i.png").write_bytes(png(IMAGE))
    return root


@pytest.fixture(scope="module")
def explainer():
    return onnxplain.Explainer(tiny(), quiet=True, max_forwards=300)


@SETTINGS
@given(method=st.sampled_from(METHODS), pairs=st.lists(st.tuples(st.sampled_from(KEYS), TEXT), max_size=3))
def test_parameters_as_text_give_a_result_or_one_sentence(explainer, method, pairs):
    """-p KEY=VALUE through the one parser and the method: a result or a UserError, never another exception."""
    from onnxplain.params import parse_pairs
    try:
        params = parse_pairs([f"{k}={v}" for k, v in pairs])
        explainer.explain(IMAGE, method, target=0, **params)
    except UserError as exc:
        assert str(exc).endswith(".") and "\n" not in str(exc) and "Traceback" not in str(exc)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), pairs=st.lists(st.tuples(st.sampled_from(KEYS), TEXT), max_size=2))
def test_cli_parameters_exit_0_or_2(paths, tmp_path_factory, method, pairs):
    out = tmp_path_factory.mktemp("out")
    args = ["--quiet", "explain", str(paths / "m.onnx"), str(paths / "i.png"), "-m", method, "-t", "0",
            "--max-forwards", "300", "--out", str(out)]
    for key, value in pairs:
        args += ["-p", f"{key}={value}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 2:
        assert result.stderr.startswith("error: ") or "Usage:" in result.stderr
        assert not any(out.iterdir())


@pytest.fixture(scope="module")
def http():
    from starlette.testclient import TestClient

    from onnxplain.serve import create_app
    app = create_app(onnxplain.Explainer(tiny(), quiet=True, max_forwards=300), workers=1)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


FIELDS = ["top", "output", "method", "target", "layer", "probability", "params", "raw", "alpha", "colormap", "extra"]


@SETTINGS
@given(path=st.sampled_from(["/predict", "/explain"]),
       fields=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUE, max_size=5),
       method=st.sampled_from(METHODS + ["nope", 3]),
       params=st.dictionaries(st.sampled_from(KEYS), JSON_VALUE, max_size=3),
       image=st.sampled_from(["png", "garbage", "empty", "not base64", "missing"]))
def test_server_fields_never_give_500(http, path, fields, method, params, image):
    body = {"method": method, "params": params, **fields}
    encoded = {"png": base64.b64encode(png(IMAGE)).decode(), "garbage": base64.b64encode(b"\x89PNG junk").decode(),
               "empty": "", "not base64": "%%%"}
    if image != "missing":
        body["image"] = encoded[image]
    if path == "/predict":
        body = {k: v for k, v in body.items() if k in ("image", "top", "output", "extra")}
    response = http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    answer = response.json()
    if response.status_code >= 400:
        assert list(answer) == ["error"] and answer["error"].endswith("."), answer
