"""onnxplain.params: the one KEY=VALUE parser and the typed coercion every -p goes through."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from onnxplain import params
from onnxplain.audit import parse_method_params
from onnxplain.errors import MethodError, UserError
from onnxplain.methods import get


@dataclass(frozen=True)
class Example:
    window: tuple[int, int] = (0, 0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    filters: tuple = ()
    flag: bool = False
    steps: int = 10
    lr: float | None = None
    channels: int | None = None
    name: str = "zero"


@pytest.mark.parametrize("key, text, expected", [
    ("window", "8", (8, 8)),               # one value for a pair: both sides
    ("window", "0", (0, 0)),               # 0 = automatic, refused before as (0,)
    ("window", "16x16", (16, 16)),
    ("window", "4,8", (4, 8)),
    ("scale", "0.5", (0.5, 0.5, 0.5)),
    ("scale", "1,2,8/4", (1.0, 2.0, 2.0)),
    ("filters", "1,2,3", (1, 2, 3)),       # a list without a typed default: ints stay ints
    ("filters", "", ()),
    ("flag", "yes", True), ("flag", "No", False), ("flag", "1", True), ("flag", "0", False),
    ("flag", "true", True), ("flag", "FALSE", False),
    ("steps", "12", 12),
    ("lr", "8/255", 8 / 255),              # None default: typed by the annotation
    ("channels", "4", 4), ("channels", "none", None),
    ("name", "blur", "blur"),
])
def test_text_becomes_the_fields_type(key, text, expected):
    assert params.coerce_fields(Example, {key: text}) == {key: expected}


def test_non_text_values_pass_through_but_numbers_broadcast_to_tuples():
    assert params.coerce_fields(Example, {"window": 8, "scale": [1, 2, 3], "steps": 5, "flag": True}) == \
        {"window": (8, 8), "scale": (1, 2, 3), "steps": 5, "flag": True}
    assert params.coerce_fields(Example, {"unknown": "x"}) == {"unknown": "x"}


@pytest.mark.parametrize("key, text, message", [
    ("window", "1x2x3", "Parameter 'window' of thing cannot be '1x2x3'; give one whole number (used for both) or "
                        "two like 16x16."),
    ("scale", "a", "Parameter 'scale' of thing cannot be 'a'; give one number (used for all 3) or 3 like "
                   "0.5x0.5x0.5."),
    ("filters", "1,b", "Parameter 'filters' of thing cannot be '1,b'; give numbers separated by commas like 1,2,3."),
    ("flag", "maybe", "Parameter 'flag' of thing cannot be 'maybe'; give true or false."),
    ("steps", "1.5", "Parameter 'steps' of thing cannot be '1.5'; give a whole number like 8."),
    ("lr", "fast", "Parameter 'lr' of thing cannot be 'fast'; give a number like 0.5 or 8/255."),
    ("lr", "1/0", "Parameter 'lr' of thing cannot be '1/0'; give a number like 0.5 or 8/255."),
])
def test_a_bad_value_is_one_sentence(key, text, message):
    with pytest.raises(MethodError) as caught:
        params.coerce_fields(Example, {key: text}, "thing", MethodError)
    assert str(caught.value) == message


def test_pairs():
    assert params.parse_pairs(["blur-sigma=1.5", " n = 3 ", "fill=a=b"]) == {"blur_sigma": "1.5", "n": "3",
                                                                               "fill": "a=b"}
    for bad in ("stride", "=8"):
        with pytest.raises(UserError, match=f"^Parameter '{bad}' is not KEY=VALUE; write e.g. -p stride=8.$"):
            params.parse_pairs([bad])


def test_make_params_and_the_audit_use_it():
    """Occlusion's stride=8 was (8,) and refused; window=0 (automatic) too."""
    occlusion = get("occlusion")
    p = occlusion.make_params(stride="8", window="0")
    assert (p.stride, p.window) == ((8, 8), (0, 0))
    assert occlusion(p).geometry((224, 224)) == ((16, 16), (8, 8))
    assert parse_method_params(["occlusion:stride=8", "occlusion:class-map=yes"], ["occlusion"]) == \
        {"occlusion": {"stride": (8, 8), "class_map": True}}
    with pytest.raises(UserError, match="is not METHOD:KEY=VALUE"):
        parse_method_params(["stride=8"], ["occlusion"])
