"""The Method contract and the raw result a method returns.

A Method receives a prepared batch and one target per image; it never decodes
files or writes output. The Explainer turns its raw maps into Attributions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from ..errors import MethodError

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..images import Prepared
    from ..targets import Target


@dataclass
class RawMaps:
    """One map per image (N, h, w) at layer or input resolution, plus per-image extras."""
    maps: np.ndarray
    extras: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.maps = np.asarray(self.maps, dtype=np.float32)
        if not self.extras:
            self.extras = [{} for _ in range(len(self.maps))]


@dataclass(frozen=True)
class NoParams:
    """A method without parameters."""


class Method:
    """Base of every explanation method; subclasses set the class attributes and `explain`."""
    name: ClassVar[str]
    engine: ClassVar[str]            # "ort" or "torch"
    summary: ClassVar[str] = ""
    uses_layer: ClassVar[bool] = False
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def make_params(cls, **given) -> Any:
        """The params dataclass from keyword arguments, naming any unknown or mistyped argument."""
        fields = {f.name: f for f in dataclasses.fields(cls.Params)}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            known = ", ".join(fields) or "none"
            raise MethodError(f"Method '{cls.name}' has no parameter '{unknown[0]}' (its parameters: {known}).")
        converted = {}
        for key, value in given.items():
            default = getattr(cls.Params(), key)
            converted[key] = _coerce(cls.name, key, value, default)
        return cls.Params(**converted)

    def explain(self, explainer: "Explainer", batch: "Prepared", targets: Sequence["Target"],
                layer: str | None = None) -> RawMaps:
        """Maps for each image of the batch and its target."""
        raise MethodError(f"Method '{self.name}' does not implement explain().")


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    """Turn CLI strings into the type of the default (tuples from 'a,b', bools from 'true')."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, tuple):
            kind = type(default[0]) if default else float
            return tuple(kind(v) for v in value.replace("x", ",").split(","))
        return type(default)(value)
    except ValueError:
        raise MethodError(f"Parameter '{key}' of method '{method}' cannot be '{value}'; "
                          f"it takes a value like {default!r}.") from None


@dataclass(frozen=True)
class Attribution:
    """One explanation of one image for one target: raw, upsampled and original-size maps plus context."""
    method: str
    params: dict
    target: dict
    layer: str | None
    raw: np.ndarray          # (h, w) at layer or input resolution, as the method computed it
    upsampled: np.ndarray    # (H, W) at model-input resolution
    heatmap: np.ndarray      # at the original image's size
    scores: np.ndarray       # the model's scores for this image on the target's output
    image: np.ndarray        # the original RGB image
    image_name: str = ""
    extras: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # why the map cannot be read (all zero, constant, non-finite), one sentence each

    def overlay(self, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
        """The heatmap blended over the original image (RGB uint8)."""
        from ..render import overlay
        return overlay(self.image, self.heatmap, alpha, colormap)

    def save(self, prefix: str, alpha: float = 0.5, colormap: str = "jet") -> dict:
        """Write `<prefix>.png` (overlay), `<prefix>.npy` (heatmap) and `<prefix>.raw.npy`; returns the paths."""
        from ..render import save_attribution
        return save_attribution(self, prefix, alpha, colormap)

    def summary(self) -> dict:
        """JSON-ready description (no arrays)."""
        return {"method": self.method, "params": _jsonable(self.params), "target": _jsonable(self.target),
                "layer": self.layer, "image": self.image_name, "raw_shape": list(self.raw.shape),
                "extras": _jsonable({k: v for k, v in self.extras.items() if not isinstance(v, np.ndarray)}),
                "warnings": list(self.warnings)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
