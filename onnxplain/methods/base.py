"""The Method contract and the raw result a method returns.

A Method receives a prepared batch and one target per image; it never decodes
files or writes output. The Explainer turns its raw maps into Attributions.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, Sequence

import numpy as np

from ..errors import MethodError
from ..lazy import LazyField
from ..params import coerce_fields

if TYPE_CHECKING:
    from ..images import Prepared
    from ..model import Model
    from ..surgery import Split
    from ..targets import Target


class MethodRuntime(Protocol):
    """What a method may use of a runtime (the model's or a tail's): its batching and a batched run."""
    batch_size: int
    fixed_batch: int | None
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray, outputs: Sequence[str] | None = None,
            desc: str | None = None) -> dict[str, np.ndarray]: ...


class MethodContext(Protocol):
    """Everything a method may call on the Explainer that runs it (the Explainer passes itself).

    A method needs nothing else: new needs are added here first, so what methods depend on stays visible.
    """
    model: "Model"             # the loaded model: tensors, layer resolution, spatial infos
    runtime: MethodRuntime     # the whole model's runtime on the explainer's engine
    quiet: bool                # no progress bars

    def forward(self, batch: "Prepared", outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Model outputs plus the named tensors of the batch, computed once per batch."""

    def run(self, x: np.ndarray, outputs: Sequence[str] | None = None, desc: str | None = None
            ) -> dict[str, np.ndarray]:
        """Arbitrary inputs (perturbed copies) through the model, batched."""

    def tail(self, layer: str) -> tuple["Split", MethodRuntime]:
        """The model cut at `layer` and a runtime for its tail."""

    def label(self, index: int) -> str:
        """A class index's name ('' when unknown)."""

    @property
    def module(self) -> Any:
        """The torch module converted from the model, on `torch_device` (gradient methods)."""

    @property
    def torch_device(self) -> str:
        """Where torch tensors of gradient methods live."""


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


class Method(abc.ABC):
    """Base of every explanation method; subclasses set the class attributes and implement `explain`."""
    name: ClassVar[str]
    engine: ClassVar[str]            # "ort" or "torch"
    summary: ClassVar[str] = ""
    uses_layer: ClassVar[bool] = False
    multi_target: ClassVar[bool] = False  # explain_many shares one set of forwards among an image's targets
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
        return cls.Params(**coerce_fields(cls.Params, given, f"method '{cls.name}'", MethodError))

    @classmethod
    def cost(cls, params: Any, input_hw: tuple[int, int], layer_shape: tuple | None = None) -> int:
        """Forward (or forward+backward) passes per image this method needs with `params`, estimated before
        any work so a limit can refuse it; `layer_shape` is the layer's (C, h, w) when the method uses one."""
        return 1

    @abc.abstractmethod
    def explain(self, context: MethodContext, batch: "Prepared", targets: Sequence["Target"],
                layer: str | None = None) -> RawMaps:
        """Maps for each image of the batch and its target."""


class MultiTargetMethod(Method):
    """A method whose forwards do not depend on the target: every target of an image from one set of forwards.

    Subclasses implement `explain_many`; `explain` (one target per image) is its special case.
    """
    multi_target = True

    def explain(self, context: MethodContext, batch: "Prepared", targets: Sequence["Target"],
                layer: str | None = None) -> RawMaps:
        return self.explain_many(context, batch, [[t] for t in targets], layer)

    @abc.abstractmethod
    def explain_many(self, context: MethodContext, batch: "Prepared", targets: Sequence[Sequence["Target"]],
                     layer: str | None = None) -> RawMaps:
        """Maps for every target of every image, image by image in `targets` order (one row per pair)."""


@dataclass(frozen=True)
class Attribution:
    """One explanation of one image for one target: raw, upsampled and original-size maps plus context.

    The Explainer gives `upsampled` and `heatmap` as Deferred calls: each is made on first read and kept
    (`target=all` holds only the raw maps until a heatmap is read)."""
    method: str
    params: dict
    target: dict
    layer: str | None
    raw: np.ndarray          # (h, w) at layer or input resolution, as the method computed it
    upsampled: np.ndarray = LazyField()  # (H, W) at model-input resolution; given as a Deferred: made on first read
    heatmap: np.ndarray = LazyField()    # at the original image's size; likewise
    scores: np.ndarray       # the model's scores for this image on the target's output
    image: np.ndarray        # the original RGB image
    image_name: str = ""
    extras: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # why the map cannot be read (all zero, constant, non-finite), one sentence each
    valid: np.ndarray | None = None  # original pixels the model saw (bool, heatmap's size); None: all

    def overlay(self, alpha: float = 0.5, colormap: str | None = None) -> np.ndarray:
        """The heatmap blended over the original image (RGB uint8); pixels the model did not see stay grey.
        colormap None: a zero-centred diverging map for signed maps, else jet."""
        from ..render import overlay
        return overlay(self.image, self.heatmap, alpha, colormap, valid=self.valid)

    def save(self, prefix: str, alpha: float = 0.5, colormap: str | None = None) -> dict:
        """Write `<prefix>.png` (overlay), `<prefix>.npy` (heatmap), `<prefix>.raw.npy`, `<prefix>.valid.npy`
        (what the model saw) and, for pixel-level gradient maps, the papers' pictures; returns the paths."""
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
