"""Shared by the synthesis methods: the image variable, objectives, forwards with taps, and the result.

Every method optimises images in *unit space*: u = pixel / 127.5 - 1 per channel, in the model's
colour order, so u in [-1, 1] is exactly the valid pixel range (images.value_range) whatever the
preset; step sizes, budgets and penalties then mean the same on every model. The model sees
x = centre + half * u, with centre and half from the preset's value range.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import graph, render
from ..writing import write_json
from ..errors import TargetError, UserError
from ..images import ImageSource, PixelMap, Prepared, Preprocess, denormalise, normalise, to_channels, value_range
from ..methods import layout as layouts, torch_common

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..model import TensorInfo

SCHEMA_VERSION = 1
ACTIVATION_OPS = {"Relu", "Clip", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "PRelu",
                  "Gelu", "Mish", "Softplus", "Tanh"}


class SynthesisError(UserError):
    """A synthesis job was asked for something the model or its parameters cannot give."""


# ---- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Synthesis:
    """A synthesised RGB uint8 image, the objective at each step, and what made it.

    `history` holds the objective at every step (the last entry at the returned image); `details`
    holds JSON-ready facts of the run (layer, objective, final values); `tiles` the per-channel
    images of a grid run.
    """
    kind: str
    image: np.ndarray
    history: list[float]
    params: dict
    details: dict
    tiles: tuple[np.ndarray, ...] = ()

    def as_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, "shape": list(self.image.shape),
                "params": self.params, "details": self.details, "history": [float(v) for v in self.history]}

    def save(self, prefix: str | Path) -> dict[str, str]:
        """Write `<prefix>.png` (the image) and `<prefix>.json` (params, details, history); returns the paths."""
        prefix = str(prefix)
        files = {"image": str(render.write_png(prefix + ".png", self.image)), "json": prefix + ".json"}
        write_json(files["json"], {**self.as_dict(), "files": files})
        return files


@dataclass(frozen=True, kw_only=True)
class Adversarial(Synthesis):
    """A fooling image: the model-input image it started from and how the attack ended (checked on onnxruntime)."""
    original: np.ndarray
    target: int
    label: str
    steps: int          # gradient steps taken
    confidence: float   # onnxruntime's softmax probability of the target on `image`
    predicted: int      # onnxruntime's top-1 class on `image`
    linf: int           # max |image - original| in pixel units (0..255)
    success: bool

    def as_dict(self) -> dict:
        return {**super().as_dict(), "target": self.target, "label": self.label, "steps": self.steps,
                "confidence": self.confidence, "predicted": self.predicted, "linf": self.linf,
                "success": self.success}

    def save(self, prefix: str | Path) -> dict[str, str]:
        """Also writes `<prefix>.original.png`, the model-input image the attack started from."""
        prefix = str(prefix)
        files = {"image": str(render.write_png(prefix + ".png", self.image)),
                 "original": str(render.write_png(prefix + ".original.png", self.original)),
                 "json": prefix + ".json"}
        write_json(files["json"], {**self.as_dict(), "files": files})
        return files


def make_params(cls: type, params: Any, overrides: dict) -> Any:
    """`params` (or the defaults) with keyword overrides, naming any unknown parameter."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise SynthesisError(f"Unknown parameter '{unknown[0]}' (known: {', '.join(known)}).")
    return replace(params if params is not None else cls(), **overrides)


def params_dict(params: Any) -> dict:
    return asdict(params) if is_dataclass(params) else dict(params)


def check_positive(**values: float) -> None:
    """Raise naming the first argument that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise SynthesisError(f"'{name}' must be greater than 0 (got {value}).")


def check_at_least_zero(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise SynthesisError(f"'{name}' must be 0 or more (got {value}).")


# ---- the image variable ----------------------------------------------------------------------
@dataclass(frozen=True)
class Space:
    """The model input seen from unit space: size, channels, layout and the map u <-> model input x."""
    size: tuple[int, int]
    channels: int
    layout: str
    preprocess: Preprocess
    centre: torch.Tensor   # (1, C, 1, 1) model value of u = 0 (mid-grey)
    half: torch.Tensor     # (1, C, 1, 1) model units per unit of u

    @classmethod
    def of(cls, explainer: "Explainer") -> "Space":
        """The explainer's input: its fixed size, or the preset's size, or 224x224 as `prepare` uses."""
        spec, pre = explainer.spec, explainer.preprocess
        size = tuple(spec.size or pre.size or (224, 224))
        channels = spec.channels
        if channels != len(pre.mean):  # gray models: normalise() averages the preset's mean and std
            pre = replace(pre, mean=(float(np.mean(pre.mean)),) * channels, std=(float(np.mean(pre.std)),) * channels)
        low, high = value_range(pre)
        to = dict(dtype=torch.float32, device=explainer.torch_device)
        centre = torch.as_tensor((low + high) / 2, **to).reshape(1, -1, 1, 1)
        half = torch.as_tensor((high - low) / 2, **to).reshape(1, -1, 1, 1)
        return cls(size, channels, spec.layout, explainer.preprocess, centre, half)

    @property
    def device(self) -> torch.device:
        return self.centre.device

    def to_model(self, u: torch.Tensor) -> torch.Tensor:
        """Model input for unit images (N, C, h, w): resized to the input size when smaller, in the model layout."""
        if tuple(u.shape[-2:]) != self.size:
            u = F.interpolate(u, size=self.size, mode="bilinear", align_corners=False)
        return layouts.nchw_to_input_torch(self.centre + self.half * u, self.layout)

    def image(self, u: torch.Tensor) -> np.ndarray:
        """One unit image (C, h, w) as RGB uint8, through images.denormalise with the explainer's preset."""
        x = (self.centre[0] + self.half[0] * u.detach()).to("cpu", torch.float32).numpy()
        return denormalise(x, self.preprocess, "NCHW")

    def from_model(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A model-layout batch as unit images (N, C, H, W) on the device."""
        x = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x, dtype=torch.float32,
                            device=self.device)
        return (layouts.input_to_nchw_torch(x, self.layout) - self.centre) / self.half

    def from_photo(self, explainer: "Explainer", image: ImageSource) -> tuple[torch.Tensor, np.ndarray]:
        """A photo resized as `prepare` does, as a unit image (1, C, H, W), and that model-input image in uint8."""
        batch = explainer.prepare([image])
        u = self.from_model(batch.x)
        return u, self.image(u[0])

    def noise(self, count: int, std: float, seed: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """`count` seeded Gaussian unit images around mid-grey, drawn on the CPU row by row (device-independent)."""
        generator = torch.Generator().manual_seed(int(seed))
        h, w = size or self.size
        u = torch.cat([torch.randn((1, self.channels, h, w), generator=generator) for _ in range(count)]) * std
        return u.clamp(-1, 1).to(self.device)


def quantise(u: torch.Tensor) -> torch.Tensor:
    """Unit images snapped to whole pixel values (what a uint8 image holds)."""
    return torch.round((u + 1) * 127.5) / 127.5 - 1


def input_batch(explainer: "Explainer", image: np.ndarray, name: str = "synthesis") -> Prepared:
    """A batch holding exactly this model-input-sized RGB uint8 image, not resized (e.g. for explainer.predict)."""
    space = Space.of(explainer)
    if tuple(image.shape[:2]) != space.size:
        raise SynthesisError(f"The image is {image.shape[1]}x{image.shape[0]} but the model input is "
                             f"{space.size[1]}x{space.size[0]}; pass an image returned by a synthesis function.")
    pixels = to_channels(image, space.channels)
    x = normalise(pixels, explainer.preprocess)[None]
    if space.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    identity = PixelMap(np.array([[1.0, 0, 0], [0, 1.0, 0]]), space.size, space.size)
    return Prepared(np.ascontiguousarray(x, dtype=np.float32), [np.ascontiguousarray(image[:, :, :3])], [identity],
                    [name], explainer.spec, explainer.preprocess)


# ---- objectives ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    """What to raise, per image: a layer channel's mean, one neuron, a class score (pre-softmax) or a layer's
    0.5 * mean of squares (DeepDream). `channel` may hold one channel per image (grid runs)."""
    kind: str                                  # channel | neuron | class | norm
    tensor: str
    channel: int | tuple[int, ...] | None = None
    position: tuple[int, int] | None = None    # neuron (row, col) in the layer's grid

    def describe(self) -> dict:
        entry = {"kind": self.kind, "tensor": self.tensor}
        if self.channel is not None:
            entry["channel"] = list(self.channel) if isinstance(self.channel, tuple) else self.channel
        if self.position is not None:
            entry["position"] = list(self.position)
        return entry


def layer_maps(value: torch.Tensor, info: "TensorInfo | None") -> torch.Tensor:
    """A layer value as (N, C, h, w): spatial layouts via layouts.channels_first_torch, vectors as 1x1 maps."""
    if info is not None and info.spatial:
        return layouts.channels_first_torch(value, info)
    if value.dim() == 2:
        return value[:, :, None, None]
    if value.dim() == 4:  # 1x1 maps keep no layout; ONNX maps are channels-first
        return value
    raise SynthesisError(f"Tensor '{info.name if info else '?'}' has rank {value.dim()}, neither a map nor a vector "
                         "of channels; pick a layer from `onnxplain inspect --spatial`.")


def class_logits(explainer: "Explainer", output: str | None = None) -> str:
    """The tensor holding class scores before softmax: the output, or the input of a final Softmax."""
    return graph.class_logits(explainer.model, explainer.output_name(output))


def class_count(explainer: "Explainer", tensor: str) -> int | None:
    info = explainer.model.tensors.get(tensor)
    shape = info.shape if info is not None else None
    if not shape or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return int(np.prod(shape[1:]))


def class_index(explainer: "Explainer", target: int | str, tensor: str) -> int:
    """A class index from an index or a class name (exact, then case-insensitive), checked against the output."""
    index = None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        index = int(target)
    elif isinstance(target, str) and target.strip().lstrip("-").isdigit():
        index = int(target.strip())
    elif isinstance(target, str) and explainer.labels:
        labels = list(explainer.labels)
        lowered = [label.lower() for label in labels]
        if target in labels:
            index = labels.index(target)
        elif target.lower() in lowered:
            index = lowered.index(target.lower())
    if index is None:
        hint = "the model's labels" if explainer.labels else "a class index (the model has no labels)"
        raise TargetError(f"Target '{target}' is not a class index or a class name; use {hint}.")
    classes = class_count(explainer, tensor)
    if index < 0 or (classes is not None and index >= classes):
        raise TargetError(f"Target class {index} is out of range: '{tensor}' has {classes} classes.")
    return index


def make_objective(explainer: "Explainer", layer: str | None = None, channel: int | Sequence[int] | None = None,
                   position: tuple[int, int] | str | None = None, target: int | str | None = None,
                   output: str | None = None) -> Objective:
    """An Objective from the user's arguments: `target` for a class score, else `layer` + `channel`
    (+ `position`, a (row, col) or 'centre', for one neuron)."""
    if target is not None:
        if channel is not None or position is not None:
            raise SynthesisError("Give either a class target or a layer channel (and position), not both.")
        tensor = class_logits(explainer, output)
        return Objective("class", tensor, class_index(explainer, target, tensor))
    if channel is None:
        raise SynthesisError("Say what to maximise: a class target, or a layer and a channel.")
    name = explainer.model.resolve_layer(layer, output)
    info = explainer.model.tensors[name]
    channels = tuple(int(c) for c in channel) if isinstance(channel, (list, tuple, range)) else (int(channel),)
    count = info.channels if info.spatial else (info.shape[1] if info.shape and len(info.shape) >= 2 else None)
    for c in channels:
        if c < 0 or (isinstance(count, int) and c >= count):
            raise SynthesisError(f"Channel {c} is out of range: layer '{name}' has {count} channels.")
    value = channels if isinstance(channel, (list, tuple, range)) else channels[0]
    if position is None:
        return Objective("channel", name, value)
    hw = info.hw if info.spatial else None
    if hw is None or not all(isinstance(d, int) for d in hw):
        raise SynthesisError(f"Layer '{name}' is not a spatial map with a known size; a neuron needs one "
                             "(pick a layer from `onnxplain inspect --spatial`).")
    row, col = (hw[0] // 2, hw[1] // 2) if position in ("centre", "center") else (int(position[0]), int(position[1]))
    if not (0 <= row < hw[0] and 0 <= col < hw[1]):
        raise SynthesisError(f"Position ({row}, {col}) is outside layer '{name}' ({hw[0]}x{hw[1]}).")
    return Objective("neuron", name, value, (row, col))


def evaluate(explainer: "Explainer", x: torch.Tensor, tensors: Sequence[str]) -> dict[str, torch.Tensor]:
    """The named tensors (outputs or tapped layers) for a model-input batch, in the autograd graph."""
    outputs = set(explainer.module.output_names)
    taps = [t for t in dict.fromkeys(tensors) if t not in outputs]
    values, tapped = torch_common.forward(explainer, x, taps)
    return {name: values[name] if name in values else tapped[name] for name in tensors}


def scores(explainer: "Explainer", objective: Objective, x: torch.Tensor) -> torch.Tensor:
    """The objective for each image of a model-input batch, shape (N,)."""
    value = evaluate(explainer, x, [objective.tensor])[objective.tensor]
    rows = len(value)
    if objective.kind == "class":
        return value.reshape(rows, -1)[:, objective.channel]
    maps = layer_maps(value, explainer.model.tensors.get(objective.tensor))
    if objective.kind == "norm":
        return 0.5 * maps.pow(2).flatten(1).mean(1)
    channels = objective.channel if isinstance(objective.channel, tuple) else (objective.channel,) * rows
    picked = maps[torch.arange(rows, device=maps.device), torch.as_tensor(channels, device=maps.device)]
    if objective.kind == "neuron":
        return picked[:, objective.position[0], objective.position[1]]
    return picked.flatten(1).mean(1)


def feature_layers(explainer: "Explainer", count: int = 5, pick: str = "last"):
    """Default layers for texture and style: one per spatial resolution on the path to the output, shallow
    first, at most `count`: the last activation at each resolution (else its last tensor), or the first
    (`pick="first"`, Gatys's conv_k_1); `pick="all"` gives each resolution's activations as a list."""
    model = explainer.model
    ancestors = model.ancestors(model.outputs[0].name)
    groups: dict[tuple[int, int], list["TensorInfo"]] = {}
    for info in model.spatial_layers:
        if info.name in ancestors and info.layout != "tokens" and info.hw and min(info.hw) > 1:
            groups.setdefault(info.hw, []).append(info)
    if not groups:
        raise SynthesisError("The model has no spatial layer to take features from; name layers explicitly.")
    chosen = [[m.name for m in ([m for m in members if m.op_type in ACTIVATION_OPS] or members)]
              for members in groups.values()][:count]
    if pick == "all":
        return chosen
    return [names[0] if pick == "first" else names[-1] for names in chosen]
