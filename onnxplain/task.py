"""What the model is, from its graph and its metadata: each output's kind, the input size, layout,
preprocessing and labels, each fact marked as read (and from where) or guessed.

Exporters write what they know into metadata_props: ultralytics (`names`, `imgsz`, `stride`, `task`,
`batch`), PaddleOCR recognisers (`character`), onnxplain itself (`onnxplain.*`). What they leave out is
guessed from the graph (a final Softmax, the shapes) and can be given as options.
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

from .errors import UserError

if TYPE_CHECKING:
    from .model import Model

GUESSED = "guessed"
LOOK_THROUGH = {"Reshape", "Flatten", "Identity", "Transpose", "Squeeze", "Unsqueeze", "Cast"}
NORMALISING = {"Softmax", "Sigmoid"}
REGRESSION_NAME = re.compile(r"(^|[^a-z])(reg|bbox|box|boxes|loc|landmark|landmarks|offset|delta)s?([^a-z]|$)", re.I)
SCORE_NAME = re.compile(r"prob|score|cls|class|logit|conf", re.I)
RESIZES = ("stretch", "crop", "letterbox")
ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
DETECTORS = ("yolov8", "yolov5", "ssd")

CLASS_TARGETS = ("predicted", "INDEX", "topK", "class name")
TARGETS = {
    "class logits": CLASS_TARGETS, "probabilities": CLASS_TARGETS,
    "detection rows": ("predicted (the most confident box)", "box:x1,y1,x2,y2[:class]", "box:#K"),
    "detection scores": ("predicted (the most confident box)", "box:x1,y1,x2,y2[:class]", "box:#K"),
    "dense map": ("predicted (the pixels the model marks)", "region:x1,y1,x2,y2[:channel]"),
    "sequence": ("predicted (the decoded text)", "char:K"),
    "regression": ("INDEX (one value)",), "boxes": (), "other": ("INDEX (one value)",),
}
# The target that fits each kind, for refusals.
FITTING = {"detection rows": "box:x1,y1,x2,y2[:class] (or box:#K for the K-th most confident box)",
           "detection scores": "box:x1,y1,x2,y2[:class] (or box:#K for the K-th most confident box)",
           "dense map": "region:x1,y1,x2,y2[:channel] (in image pixels)",
           "sequence": "char:K (the K-th decoded character)"}
# Which output is explained when none is named: class outputs before the rest, regression last.
PREFERENCE = ("probabilities", "class logits", "detection rows", "detection scores", "sequence", "dense map",
              "other", "regression", "boxes")


@dataclass(frozen=True)
class Fact:
    """One thing known about the model, and where it came from ("metadata 'imgsz'", "graph", "option", guessed)."""
    value: Any
    source: str = GUESSED

    @property
    def read(self) -> bool:
        return self.source != GUESSED and not self.source.startswith(GUESSED)

    def describe(self) -> dict:
        value = self.value if not isinstance(self.value, (list, tuple)) or len(self.value) <= 8 else \
            f"{len(self.value)} entries"
        return {"value": list(value) if isinstance(value, tuple) else value, "source": self.source,
                "read": self.read}


@dataclass(frozen=True)
class OutputInfo:
    """One model output: its kind, whether the model already normalised it, and the box layout of detectors."""
    name: str
    shape: tuple
    kind: str
    normalised: bool = False
    why: str = ""
    box_layout: Any = None  # targets.BoxLayout for detection outputs

    @property
    def targets(self) -> tuple[str, ...]:
        return TARGETS.get(self.kind, ())

    @property
    def classes(self) -> int | None:
        """Class scores per image from the declared shape (None: unknown, or not class scores)."""
        dims = tuple(self.shape or ())[1:]
        known = self.kind not in FITTING and all(isinstance(d, int) and d > 0 for d in dims)
        return math.prod(dims) if known and dims else None

    def describe(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "kind": self.kind, "normalised": self.normalised,
                "why": self.why, "targets": list(self.targets),
                "box_layout": None if self.box_layout is None else vars(self.box_layout).copy()}


@dataclass(frozen=True)
class Task:
    """Everything onnxplain knows about what the model does and how it wants its images."""
    exporter: str
    input_size: Fact
    layout: Fact
    preset: Fact
    resize: Fact
    order: Fact
    labels: Fact
    dictionary: Fact
    detector: Fact
    outputs: tuple[OutputInfo, ...] = field(default=())
    exporter_source: str = ""  # what marks the exporter (metadata, producer, graph name)

    def output(self, name: str) -> OutputInfo | None:
        return next((o for o in self.outputs if o.name == name), None)

    @property
    def default_output(self) -> str | None:
        """The output explained when none is named: by kind (class scores first, regression last)."""
        ranked = sorted(self.outputs, key=lambda o: (PREFERENCE.index(o.kind) if o.kind in PREFERENCE else 99,
                                                     not o.normalised))
        return ranked[0].name if ranked else None

    def describe(self) -> dict:
        facts = {k: getattr(self, k).describe() for k in
                 ("input_size", "layout", "preset", "resize", "order", "labels", "dictionary", "detector")}
        return {"exporter": self.exporter, "exporter_source": self.exporter_source, **facts, "outputs": [o.describe() for o in self.outputs],
                "default_output": self.default_output}


# ---- metadata as exporters write it ----------------------------------------------------------------------------
def literal(text: str) -> Any:
    """A Python literal from a metadata string (ultralytics writes dicts and lists with str()), or the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def ultralytics_names(text: str) -> list[str] | None:
    """Class names from ultralytics' `names` ("{0: 'person', 1: 'bicycle'}"), in index order."""
    value = literal(text)
    if isinstance(value, dict):
        try:
            return [str(value[k]) for k in sorted(value, key=int)]
        except (TypeError, ValueError):
            return None
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else None


def size_of(value: Any) -> tuple[int, int] | None:
    """(H, W) from "[640, 640]", "640", "48x320", 640 or (48, 320)."""
    if isinstance(value, str):
        text = value.strip()
        match = re.fullmatch(r"(\d+)\s*[x,]\s*(\d+)", text)
        value = (int(match.group(1)), int(match.group(2))) if match else literal(text)
    if isinstance(value, int) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], int):
        return value[0], value[0]
    return None


def paddle_dictionary(text: str) -> list[str]:
    """A PaddleOCR recogniser's classes from `character`: blank at 0, the dictionary, a space at the end."""
    value = literal(text) if text.lstrip().startswith("[") else text
    chars = [str(c) for c in value] if isinstance(value, list) else text.split("\n")
    if chars and chars[-1] == "":
        chars = chars[:-1]
    return ["blank", *chars, " "]


def exporter_of(model: "Model") -> str:
    return exporter_evidence(model)[0]


def exporter_evidence(model: "Model") -> tuple[str, str]:
    """(exporter, what says so): ultralytics from its metadata; Paddle from `character`, the producer, or the
    graph name paddle2onnx writes ('Model from PaddlePaddle.', older 'paddle-onnx') where the producer is blank."""
    meta, proto = model.metadata, model.proto
    if "names" in meta and ("imgsz" in meta or "stride" in meta):
        return "ultralytics", "metadata 'names' and 'imgsz'/'stride'"
    if "character" in meta:
        return "paddle", "metadata 'character'"
    if "paddle" in proto.producer_name.lower():
        return "paddle", f"producer '{proto.producer_name}'"
    if "paddle" in proto.graph.name.lower():
        return "paddle", f"graph name '{proto.graph.name}'"
    return proto.producer_name or "unknown", "producer name" if proto.producer_name else \
        "empty producer name"


# ---- the task ---------------------------------------------------------------------------------------------------
def understand(model: "Model", input_size: Any = None, resize: str | None = None, order: str | None = None,
               layout: str | None = None, detector: str | None = None, preset: str | None = None,
               labels: Sequence[str] | None = None) -> Task:
    """What the model is: facts from options first, then metadata, then the graph, then guesses.

    Only the input facts are read before the model's tensors are probed, so the probe runs at the right size.
    """
    meta, (exporter, evidence) = model.metadata, exporter_evidence(model)
    check_option("resize", resize, RESIZES)
    check_option("order", order, ORDERS)
    check_option("layout", layout, LAYOUTS)
    check_option("detector", detector, DETECTORS)
    dictionary = Fact(paddle_dictionary(meta["character"]), "metadata 'character'") if "character" in meta \
        else Fact(None)
    size = _input_size(model, meta, exporter, input_size, dictionary)
    if model.probe_size is None and size.value is not None:
        model.probe_size = size.value  # before the first probe: symbolic dims are run at the model's own size
    task = Task(exporter, size, _layout(model, layout), *_preprocessing(meta, exporter, preset, resize, order,
                                                                               evidence),
                _labels(model, meta, labels), dictionary, _detector(meta, exporter, detector),
                exporter_source=evidence)
    task = replace(task, outputs=regression_beside_probabilities(
        [classify_output(model, o.name, task) for o in model.outputs]))
    kind = task.output(task.default_output).kind if task.default_output else ""
    if task.resize.value is None and kind in ("dense map", "detection rows", "detection scores"):
        task = replace(task, resize=Fact("letterbox", f"guessed (a {kind} must see the whole image)"))
    return task


def regression_beside_probabilities(outputs: list[OutputInfo]) -> tuple[OutputInfo, ...]:
    """Outputs of 4 (box offsets) or 10 (landmarks) raw values beside a normalised output are regression (MTCNN)."""
    if not any(o.normalised for o in outputs):
        return tuple(outputs)
    return tuple(replace(o, kind="regression", why="4 or 10 raw values beside a probability output (box or "
                         "landmark regression); " + o.why)
                 if not o.normalised and len(o.shape) >= 2 and o.shape[1] in (4, 10) and o.kind in
                 ("class logits", "dense map") else o for o in outputs)


def check_option(name: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value.lower() not in allowed:
        raise UserError(f"Option {name} cannot be '{value}'; use one of {', '.join(allowed)}.")


def _input_size(model: "Model", meta: dict, exporter: str, option: Any, dictionary: Fact) -> Fact:
    if option is not None:
        size = size_of(option)
        if size is None:
            raise UserError(f"Input size '{option}' is not H x W; give two positive whole numbers like 48x320.")
        return Fact(size, "option")
    shape = model.inputs[0].shape if model.inputs else ()
    if len(shape) == 4:
        nhwc = shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4)
        h, w = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
        if isinstance(h, int) and isinstance(w, int):
            return Fact((h, w), "graph (input shape)")
    for key in ("onnxplain.input_size", "imgsz"):
        if key in meta and size_of(meta[key]):
            return Fact(size_of(meta[key]), f"metadata '{key}'")
    if dictionary.value is not None:
        h = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else 48
        return Fact((h, 320), "guessed (PaddleOCR recogniser: height 48, width 320)")
    if exporter == "paddle" and model.outputs and all(len(o.shape) == 4 for o in model.outputs):
        return Fact(None, "guessed (a Paddle map model such as PP-OCR det takes any size; 224x224 where the "
                          "input is symbolic)")
    if exporter == "paddle" or exporter == "ultralytics":
        return Fact((640, 640), f"guessed ({exporter} detector default)")
    return Fact(None, "guessed (224x224 where the input is symbolic)")


def _layout(model: "Model", option: str | None) -> Fact:
    if option is not None:
        return Fact(option.upper(), "option")
    shape = model.inputs[0].shape if model.inputs else ()
    if len(shape) != 4:
        return Fact(None, "graph (the input is not an image batch)")
    nhwc = shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4)
    return Fact("NHWC" if nhwc else "NCHW", "graph (channel dim of the input)" if shape[1] in (1, 3, 4)
                or nhwc else "guessed (no channel dim of 1, 3 or 4)")


def _preprocessing(meta: dict, exporter: str, preset: str | None, resize: str | None, order: str | None,
                   evidence: str = "") -> tuple[Fact, Fact, Fact]:
    """(preset, resize, order) facts; `evidence` says what marks the exporter (a guess from the producer)."""
    if preset is not None:
        name = Fact(preset, "option")
    elif "onnxplain.preset" in meta:
        name = Fact(meta["onnxplain.preset"], "metadata 'onnxplain.preset'")
    elif exporter == "ultralytics":
        name = Fact("raw01", "guessed (ultralytics models take pixels / 255)")
    elif exporter == "paddle":
        name = Fact("minus1to1", "guessed (PaddleOCR normalises to -1..1)")
    else:
        name = Fact("imagenet", GUESSED)
    default_resize = {"ultralytics": "letterbox", "paddle": "letterbox"}.get(exporter)
    if resize is not None:
        size_mode = Fact(resize.lower(), "option")
    elif "onnxplain.resize" in meta:
        size_mode = Fact(meta["onnxplain.resize"], "metadata 'onnxplain.resize'")
    else:
        size_mode = Fact(default_resize, f"guessed ({exporter} convention)" if default_resize else
                         "guessed (the preset's own)")
    if order is not None:
        colour = Fact(order.upper(), "option")
    elif "onnxplain.order" in meta:
        colour = Fact(meta["onnxplain.order"].upper(), "metadata 'onnxplain.order'")
    else:
        colour = Fact("BGR", f"guessed (a Paddle export by its {evidence}: PaddleOCR reads images with OpenCV, "
                             "BGR, and applies mean/std in that order)") if exporter == "paddle" else \
            Fact(None, "guessed (the preset's own)")
    return name, size_mode, colour


def _labels(model: "Model", meta: dict, labels: Sequence[str] | None) -> Fact:
    if labels is not None:
        return Fact(list(labels), "option")
    if "onnxplain.labels" in meta:
        return Fact(meta["onnxplain.labels"], "metadata 'onnxplain.labels' (a file beside the model)")
    if "names" in meta:
        names = ultralytics_names(meta["names"])
        if names:
            return Fact(names, "metadata 'names'")
    return Fact(None, GUESSED)


def _detector(meta: dict, exporter: str, option: str | None) -> Fact:
    if option is not None:
        return Fact(option.lower(), "option")
    if exporter == "ultralytics" and meta.get("task", "detect") == "detect":
        return Fact("yolov8", "metadata 'task' (ultralytics detect)")
    return Fact(None, GUESSED)


# ---- outputs ----------------------------------------------------------------------------------------------------
def last_op(model: "Model", name: str) -> str:
    """The op that computes `name`, looking through reshapes, transposes and identities."""
    node = model.producers.get(name)
    while node is not None and node.op_type in LOOK_THROUGH and node.input:
        node = model.producers.get(node.input[0])
    return node.op_type if node is not None else "input"


def classify_output(model: "Model", name: str, task: Task) -> OutputInfo:
    """The kind of one output, from its shape, its last op, its name and the task's metadata."""
    from .targets.base import BoxLayout
    from .model import _fmt_shape
    info = next(o for o in model.outputs if o.name == name)
    probed = model.tensors[name].shape if name in model.tensors else None
    shape = tuple(p if isinstance(p, int) and not isinstance(d, int) else d
                  for d, p in zip(info.shape, probed)) if probed and len(probed) == len(info.shape) else info.shape
    shape, op = tuple(shape), last_op(model, name)
    if shape and not isinstance(shape[0], int):
        shape = (info.shape[0],) + shape[1:]
    normalised = op in NORMALISING
    ends = f"ends in {op}" if normalised else f"last op {op}"
    dims = list(shape[1:])
    classes = len(task.labels.value) if isinstance(task.labels.value, list) else None
    make = lambda kind, why, layout=None: OutputInfo(name, shape, kind, normalised,  # noqa: E731
                                                     f"{why}; shape {_fmt_shape(shape)}, {ends}", layout)
    if len(dims) == 1 or (len(dims) == 3 and dims[1:] == [1, 1]):
        if REGRESSION_NAME.search(name) and not normalised:
            return make("regression", "named like box regression")
        return make("probabilities" if normalised else "class logits", "one score per class")
    if len(dims) == 2 and isinstance(dims[1], int):
        a, b = dims
        if task.dictionary.value is not None and b == len(task.dictionary.value):
            return make("sequence", "CTC scores over the 'character' dictionary (N x T x C)")
        if not isinstance(a, int):
            if op == "Softmax":
                return make("sequence", "per-step class probabilities (N x T x C), no dictionary in the metadata")
            return make("other", "a matrix per image")
        detector = task.detector.value
        if detector == "ssd" or (detector is None and b == 4 and not normalised):
            if b == 4:
                return make("boxes", "box coordinates (N x A x 4)")
            return make("detection scores", "class scores per anchor (N x A x C)",
                        BoxLayout(boxes_output=_boxes_output(model, name, a)))
        if detector == "yolov8" or (detector is None and classes is not None and a == 4 + classes) or \
                (detector is None and a < b and 5 <= a and b > 4 * a and not normalised):
            return make("detection rows", "YOLOv8 layout N x (4+C) x A", BoxLayout(axis="columns"))
        if detector == "yolov5" or (detector is None and (classes is not None and b == 5 + classes or
                                                          (a > 4 * b and b >= 6 and not normalised))):
            return make("detection rows", "YOLOv5 layout N x A x (5+C)", BoxLayout(objectness=True))
        if op == "Softmax":
            return make("sequence", "per-step class probabilities (N x T x C), no dictionary in the metadata")
        return make("other", "a matrix per image")
    if len(dims) == 3 and all(isinstance(d, int) for d in dims) and dims[1] > 1 and dims[2] > 1:
        if REGRESSION_NAME.search(name) and not normalised:
            return make("regression", "named like box regression (a map of offsets)")
        return make("dense map", "a map per channel (N x K x H x W)")
    return make("other", "no known layout")


def _boxes_output(model: "Model", scores: str, anchors: int) -> str | None:
    """The SSD-style boxes output (N x A x 4) beside a scores output with the same anchor count."""
    def shape(o):  # the probed shape where the declared one is symbolic
        return model.tensors[o.name].shape if o.name in model.tensors and model.tensors[o.name].shape else o.shape
    return next((o.name for o in model.outputs if o.name != scores and len(shape(o)) == 3
                 and shape(o)[1] == anchors and shape(o)[2] == 4), None)

