"""Metrics that audit explanations on the model as deployed: faithfulness, localisation, sanity and drift.

- deletion / insertion AUC (Petsiuk et al., 2018): remove (or add back) pixels in the order a map ranks
  them and follow the target's score; a faithful map makes the score fall fast (low deletion AUC) and
  rise fast (high insertion AUC). All steps of one image run through onnxruntime as one batch.
- pointing game (Zhang et al., 2016): the map's maximum, at the original image's size, lies within
  `tolerance` pixels of a ground-truth box.
- randomisation sanity check (Adebayo et al., 2018): randomise the weights of the model file layer by layer
  from the top (cascading) and one layer at a time (independent); a map that barely changes does not
  depend on what the model learned.
- drift: the same images through two model files (e.g. fp32 and its int8 quantisation): agreement of
  top-1 and top-k and the rank correlation of each method's maps.

Maps are compared by magnitude (|map|), so a sign flip does not count as a change, as in Adebayo et al.'s
absolute-value variant.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np

from .errors import UserError
from .images import normalise as normalise_pixels
from .targets import ClassTarget

if TYPE_CHECKING:
    from .explainer import Explainer
    from .images import Prepared
    from .methods.base import Attribution
    from .model import Model

BASELINES = ("zero", "black", "blur")
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SANITY_MAX_SPEARMAN = 0.5  # mean rank correlation after the full cascade above which a method fails
POINTING_TOLERANCE = 15    # pixels, as in Zhang et al.'s pointing game
STEPS = 32


# ---- deletion and insertion ------------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    """The target's score after removing (deletion) or adding (insertion) each fraction of pixels."""
    kind: str                 # "deletion" or "insertion"
    fractions: np.ndarray     # (steps + 1,) from 0 to 1
    scores: np.ndarray        # (steps + 1,)
    auc: float

    def as_dict(self) -> dict:
        return {"kind": self.kind, "auc": self.auc, "fractions": [round(float(f), 6) for f in self.fractions],
                "scores": [float(s) for s in self.scores]}


def auc(fractions: np.ndarray, scores: np.ndarray) -> float:
    """Area under a curve by the trapezoid rule (fractions ascending from 0 to 1)."""
    fractions, scores = np.asarray(fractions, np.float64), np.asarray(scores, np.float64)
    return float(np.sum((scores[1:] + scores[:-1]) / 2 * np.diff(fractions)))


def baseline(x: np.ndarray, kind: str, preprocess, layout: str = "NCHW") -> np.ndarray:
    """What removed pixels become, for one model input (model layout, no batch axis).

    "zero": zeros in model space (the mean colour for mean/std presets, black for raw ones);
    "black": the model-space value of a black image; "blur": the image Gaussian-blurred (sigma 5, 11x11,
    as Petsiuk et al. use for insertion).
    """
    if kind == "zero":
        return np.zeros_like(x)
    hwc = x.transpose(1, 2, 0) if layout == "NCHW" else x
    if kind == "black":
        value = normalise_pixels(np.zeros(hwc.shape, np.uint8), preprocess).astype(x.dtype)
    elif kind == "blur":
        value = cv2.GaussianBlur(np.ascontiguousarray(hwc, np.float32), (11, 11), 5.0,
                                 borderType=cv2.BORDER_REFLECT).reshape(hwc.shape).astype(x.dtype)
    else:
        raise UserError(f"Unknown baseline '{kind}'; use one of {', '.join(BASELINES)}.")
    return value.transpose(2, 0, 1) if layout == "NCHW" else value


def pixel_order(saliency: np.ndarray) -> np.ndarray:
    """Rank of each pixel (0 = most salient); ties keep raster order so the result is deterministic."""
    flat = np.nan_to_num(np.asarray(saliency, np.float64)).ravel()
    order = np.argsort(-flat, kind="stable")
    rank = np.empty(flat.size, np.int64)
    rank[order] = np.arange(flat.size)
    return rank.reshape(saliency.shape)


def deletion_insertion(explainer: "Explainer", x: np.ndarray, saliency: np.ndarray, target: int,
                       output: str | None = None, steps: int = STEPS, probability: bool = True,
                       deletion_baseline: str = "zero", insertion_baseline: str = "blur") -> tuple[Curve, Curve]:
    """Deletion and insertion curves of one model input `x` (model layout, no batch axis) for a map.

    The map is resized to the model input when needed; the score is the target class's softmax probability
    (or its logit). Both curves' 2 * (steps + 1) inputs run through the model in one batched call.
    """
    if steps < 1:
        raise UserError(f"Deletion/insertion needs at least 1 step, not {steps}.")
    layout = explainer.spec.layout
    hw = x.shape[1:3] if layout == "NCHW" else x.shape[0:2]
    if saliency.shape != tuple(hw):
        saliency = cv2.resize(np.asarray(saliency, np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    rank = pixel_order(saliency)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * rank.size).astype(np.int64)
    masks = rank[None] < counts[:, None, None]                     # (steps + 1, H, W): pixels moved so far
    masks = masks[:, None] if layout == "NCHW" else masks[..., None]
    removed = baseline(x, deletion_baseline, explainer.preprocess, layout)
    start = baseline(x, insertion_baseline, explainer.preprocess, layout)
    inputs = np.concatenate([np.where(masks, removed[None], x[None]), np.where(masks, x[None], start[None])])
    output = explainer.output_name(output)
    info = explainer.task.output(output) if hasattr(explainer, "task") else None
    scores = ClassTarget(output, index=int(target), probability=probability,
                         normalised=bool(info and info.normalised)).score(
        explainer.run(inputs.astype(np.float32), [output]))
    scores = np.asarray(scores, np.float64)
    deletion, insertion = scores[:steps + 1], scores[steps + 1:]
    return (Curve("deletion", fractions, deletion, auc(fractions, deletion)),
            Curve("insertion", fractions, insertion, auc(fractions, insertion)))


def attribution_curves(explainer: "Explainer", batch: "Prepared", attributions: Sequence["Attribution"],
                       **kwargs) -> list[tuple[Curve, Curve]]:
    """Deletion and insertion curves for attributions of a batch's images (one per image, in order)."""
    return [deletion_insertion(explainer, batch.x[i], a.upsampled, a.target["index"], a.target.get("output"),
                               **kwargs) for i, a in enumerate(attributions)]


# ---- pointing game ---------------------------------------------------------------------------
Box = tuple[float, float, float, float]


def pointing_hit(heatmap: np.ndarray, boxes: Sequence[Sequence[float]], tolerance: float = POINTING_TOLERANCE) -> bool:
    """True when the map's maximum lies within `tolerance` pixels of any (x1, y1, x2, y2) box.

    The map and boxes are in the same pixels (the original image's: use `Attribution.heatmap`); a
    constant map has no maximum and counts as a miss.
    """
    heatmap = np.nan_to_num(np.asarray(heatmap, np.float64))
    if heatmap.size == 0 or heatmap.max() == heatmap.min():
        return False
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    for x1, y1, x2, y2 in boxes:
        dx = max(x1 - col, 0.0, col - x2)
        dy = max(y1 - row, 0.0, row - y2)
        if np.hypot(dx, dy) <= tolerance:
            return True
    return False


def load_boxes(path: str | os.PathLike) -> dict[str, list[Box]]:
    """Boxes per image from JSON: {"image.jpg": [[x1, y1, x2, y2], ...]} in original pixels."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Boxes file '{path}' does not exist; pass a JSON file like {{\"a.jpg\": [[x1, y1, x2, y2]]}}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"Boxes file '{path}' is not valid JSON; write {{\"a.jpg\": [[x1, y1, x2, y2]]}}.") from None
    if not isinstance(data, dict):
        raise UserError(f"Boxes file '{path}' must hold an object mapping image names to lists of boxes.")
    boxes: dict[str, list[Box]] = {}
    for name, entries in data.items():
        if isinstance(entries, (list, tuple)) and len(entries) == 4 and all(_is_number(v) for v in entries):
            entries = [entries]  # one box given without the outer list
        ok = isinstance(entries, (list, tuple)) and all(
            isinstance(b, (list, tuple)) and len(b) == 4 and all(_is_number(v) for v in b) and b[0] <= b[2]
            and b[1] <= b[3] for b in entries)
        if not ok:
            raise UserError(f"Boxes for '{name}' in '{path}' are not a list of [x1, y1, x2, y2] with x1 <= x2 "
                            "and y1 <= y2.")
        boxes[str(name)] = [tuple(float(v) for v in b) for b in entries]
    return boxes


def boxes_for(boxes: dict[str, list[Box]], image: str | os.PathLike, root: str | os.PathLike | None = None
              ) -> list[Box] | None:
    """The boxes of one image, keyed by its path relative to `root`, its file name, or its path as given."""
    path = Path(image)
    keys = [path.as_posix(), path.name]
    if root is not None:
        try:
            keys.insert(0, path.resolve().relative_to(Path(root).resolve()).as_posix())
        except ValueError:
            pass
    return next((boxes[k] for k in keys if k in boxes), None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- map similarity --------------------------------------------------------------------------
def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0 with ties given their average rank (as scipy.stats.rankdata, minus one)."""
    flat = np.asarray(values, np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], flat.size]
    result = np.empty(flat.size)
    result[order] = ((starts + ends - 1) / 2.0)[group]
    return result


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps; two constant maps agree (1), one constant map does not (0)."""
    ra, rb = ranks(np.nan_to_num(a)), ranks(np.nan_to_num(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    na, nb = np.sqrt((ra * ra).sum()), np.sqrt((rb * rb).sum())
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.clip((ra * rb).sum() / (na * nb), -1.0, 1.0))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al., 2004) with an 11-tap Gaussian window, borders cropped.

    Matches skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)
    without depending on scikit-image.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    radius = int(3.5 * sigma + 0.5)
    size = 2 * radius + 1
    if min(a.shape) < size:  # too small for the window: upsample both (maps are smooth)
        scale = size / min(a.shape)
        shape = (int(np.ceil(a.shape[1] * scale)), int(np.ceil(a.shape[0] * scale)))
        a, b = (cv2.resize(m, shape, interpolation=cv2.INTER_LINEAR) for m in (a, b))

    def blur(m: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(m, (size, size), sigma, borderType=cv2.BORDER_REFLECT)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s[radius:-radius, radius:-radius].mean())


def unit(heatmap: np.ndarray) -> np.ndarray:
    """|map| scaled to [0, 1] (a constant map becomes 0): the form maps are compared in."""
    m = np.abs(np.nan_to_num(np.asarray(heatmap, np.float64)))
    peak = m.max() if m.size else 0.0
    low = m.min() if m.size else 0.0
    return (m - low) / (peak - low) if peak > low else np.zeros_like(m)


def similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Spearman, SSIM) of two maps' magnitudes; `b` is resized to `a` when their sizes differ."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)
    ua, ub = unit(a), unit(b)
    return spearman(ua, ub), ssim(ua, ub)


# ---- randomisation sanity check --------------------------------------------------------------
@dataclass(frozen=True)
class WeightLayer:
    """A node with learned weights: its output tensor (the address), op, and the weights it reads."""
    name: str
    op_type: str
    weights: tuple[str, ...]


def weight_layers(model: "Model") -> list[WeightLayer]:
    """Conv/ConvTranspose/Gemm/MatMul nodes that read weights, in graph order.

    Weights forwarded through Identity nodes (legacy exports share weights that way) are traced back to
    the initializer or Constant that holds them, which is what `surgery.randomise` redraws.
    """
    stored = {t.name for t in model.proto.graph.initializer}
    stored |= {n.output[0] for n in model.proto.graph.node if n.op_type == "Constant"}
    known = set(model.weights)
    layers = []
    for node in model.proto.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        sources = []
        for name in node.input:
            while name in known and name not in stored and name in model.producers \
                    and model.producers[name].op_type == "Identity":
                name = model.producers[name].input[0]
            if name in stored and name in known and name not in sources:
                sources.append(name)
        if sources and node.output and node.output[0]:
            layers.append(WeightLayer(node.output[0], node.op_type, tuple(sources)))
    return layers


@dataclass(frozen=True)
class SanityStep:
    """Maps after randomising some layers, compared with the original maps (means over images)."""
    mode: str                    # "cascade" (this layer and all above it) or "independent" (this layer only)
    layer: str                   # the lowest layer randomised at this step
    randomised: tuple[str, ...]  # every layer randomised at this step
    spearman: float
    ssim: float
    per_image: tuple[float, ...]  # Spearman per image
    example: np.ndarray | None = None  # the first image's randomised map at model-input size, for the report

    def as_dict(self) -> dict:
        return {"mode": self.mode, "layer": self.layer, "randomised": list(self.randomised),
                "spearman": self.spearman, "ssim": self.ssim, "per_image": list(self.per_image)}


@dataclass(frozen=True)
class SanityResult:
    """A method's randomisation check: passes when the full cascade leaves mean Spearman <= threshold."""
    method: str
    layer: str | None
    threshold: float
    steps: tuple[SanityStep, ...]
    original: np.ndarray | None = None  # the first image's original map at model-input size

    @property
    def cascade(self) -> list[SanityStep]:
        return [s for s in self.steps if s.mode == "cascade"]

    @property
    def independent(self) -> list[SanityStep]:
        return [s for s in self.steps if s.mode == "independent"]

    @property
    def final_spearman(self) -> float:
        """Mean Spearman after every weight layer is randomised (the last cascade step)."""
        return self.cascade[-1].spearman

    @property
    def final_ssim(self) -> float:
        return self.cascade[-1].ssim

    @property
    def passed(self) -> bool:
        return self.final_spearman <= self.threshold

    def verdict(self) -> str:
        """One sentence for reports."""
        if self.passed:
            return (f"{self.method} passes: after randomising every weight layer its maps keep a mean Spearman "
                    f"of {self.final_spearman:.2f} (<= {self.threshold:.2f}), so they depend on the learned weights.")
        return (f"{self.method} FAILS: after randomising every weight layer its maps keep a mean Spearman of "
                f"{self.final_spearman:.2f} (> {self.threshold:.2f}); they barely depend on what the model learned.")

    def as_dict(self) -> dict:
        return {"method": self.method, "layer": self.layer, "threshold": self.threshold, "passed": self.passed,
                "final_spearman": self.final_spearman, "final_ssim": self.final_ssim, "verdict": self.verdict(),
                "steps": [s.as_dict() for s in self.steps]}


def twin(explainer: "Explainer", proto) -> "Explainer":
    """An Explainer like `explainer` (preprocessing, labels, device, engine, batch size) for another ModelProto.

    A proto that differs only in weights shares the original's structural index (tensors, shapes,
    layouts), so the copy skips shape inference and the probe run.
    """
    from .explainer import Explainer
    from .model import Model
    old = explainer.model
    model = Model(proto, old.path, old.probe_size)
    if _same_structure(old.proto, proto):
        for key in ("inputs", "outputs", "producers", "consumers", "input_dependent", "tensors", "layers",
                    "spatial_layers"):
            if key in old.__dict__:
                model.__dict__[key] = old.__dict__[key]
    return Explainer(model, preprocess=explainer.preprocess, device=explainer.device, labels=explainer.labels,
                     batch_size=explainer.runtime.batch_size, quiet=explainer.quiet, input_name=explainer.input.name,
                     input_size=old.probe_size, engine=explainer.engine)


def _same_structure(a, b) -> bool:
    """True when two graphs have the same nodes, inputs and outputs (weights may differ)."""
    def shape(p):
        return ([(n.op_type, tuple(n.input), tuple(n.output)) for n in p.graph.node if n.op_type != "Constant"],
                [i.name for i in p.graph.input], [o.name for o in p.graph.output])
    return shape(a) == shape(b)


def _spread(count: int, wanted: int | None) -> list[int]:
    """`wanted` indices in 1..count spread evenly and always including count (all when None)."""
    if wanted is None or wanted >= count:
        return list(range(1, count + 1))
    if wanted <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(1, count, wanted)})


def sanity_check(explainer: "Explainer", images, method: str, layer: str | None = "auto",
                 target: Any = "predicted", depths: int | None = None, independent: int | None = None,
                 threshold: float = SANITY_MAX_SPEARMAN, seed: int = 0, progress_desc: str | None = None,
                 **params) -> SanityResult:
    """Randomise weight layers from the top (cascade) and one at a time (independent); compare maps.

    `depths` limits the cascade to that many evenly spread depths (the full cascade is always included) and
    `independent` to that many evenly spread layers (0 skips it); None evaluates every one, as the paper does
    (one model load and explanation per step, so pass small numbers for deep models). Targets are fixed
    from the original model so both maps answer the same question.
    """
    from . import methods as registry
    from .progress import progress
    from .surgery import randomise
    layers = weight_layers(explainer.model)
    if not layers:
        raise UserError("The model has no Conv, Gemm or MatMul layer with weights to randomise.")
    batch = explainer.prepare(images)
    cls = registry.get(method)
    layer_name = explainer.model.resolve_layer(layer) if cls.uses_layer else None
    original = explainer.explain(batch, method=method, target=target, layer=layer_name, **params)
    if len(original) != len(batch):
        raise UserError("The sanity check explains one target per image; use 'predicted' or a class index.")
    targets = [a.target.get("index", target) for a in original]
    top_down = list(reversed(layers))
    plan = [("cascade", top_down[:k]) for k in _spread(len(layers), depths)]
    plan += [("independent", [top_down[k - 1]]) for k in _spread(len(layers), independent)]
    steps = []
    for mode, chosen in progress(plan, desc=progress_desc or f"sanity {method}", quiet=explainer.quiet):
        names = [w for entry in chosen for w in entry.weights]
        other = twin(explainer, randomise(explainer.model.proto, names, seed=seed))
        maps = other.explain(_same_batch(batch), method=method, target=targets, layer=layer_name, **params)
        pairs = [similarity(a.upsampled, b.upsampled) for a, b in zip(original, maps)]
        steps.append(SanityStep(mode, chosen[-1].name, tuple(c.name for c in chosen),
                                float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs])),
                                tuple(p[0] for p in pairs), maps[0].upsampled))
    return SanityResult(method, layer_name, threshold, tuple(steps), original[0].upsampled)


def _same_batch(batch: "Prepared") -> "Prepared":
    """The batch's inputs without its cached outputs (those belong to the original model)."""
    from .images import Prepared
    return Prepared(batch.x, batch.originals, batch.pixel_maps, batch.names, batch.spec, batch.preprocess)


# ---- drift between two models ----------------------------------------------------------------
@dataclass(frozen=True)
class ImageDrift:
    """One image through two models: their top-k, agreement, and each method's map rank correlation."""
    image: str
    top_a: tuple[int, ...]
    top_b: tuple[int, ...]
    probability_a: float      # model A's probability of its top-1 class
    probability_b: float      # model B's probability of that same class
    spearman: dict[str, float] = field(default_factory=dict)
    ssim: dict[str, float] = field(default_factory=dict)

    @property
    def top1_agree(self) -> bool:
        return self.top_a[0] == self.top_b[0]

    @property
    def top5_overlap(self) -> float:
        """|top-k(A) & top-k(B)| / k with k = 5 or the number of classes."""
        return len(set(self.top_a) & set(self.top_b)) / len(self.top_a)

    def drift_key(self) -> tuple:
        """Sort key: images that drift most come first (top-1 change, then top-k, then map correlation)."""
        mean = float(np.mean(list(self.spearman.values()))) if self.spearman else 1.0
        return (self.top1_agree, self.top5_overlap, mean)

    def as_dict(self) -> dict:
        return {"image": self.image, "top_a": list(self.top_a), "top_b": list(self.top_b),
                "top1_agree": self.top1_agree, "top5_overlap": self.top5_overlap,
                "probability_a": self.probability_a, "probability_b": self.probability_b,
                "spearman": dict(self.spearman), "ssim": dict(self.ssim)}


@dataclass(frozen=True)
class DriftResult:
    """Drift over a set of images, most drifting first, with the summary metrics."""
    images: tuple[ImageDrift, ...]

    @property
    def top1_agreement(self) -> float:
        return float(np.mean([d.top1_agree for d in self.images])) if self.images else float("nan")

    @property
    def top5_overlap(self) -> float:
        return float(np.mean([d.top5_overlap for d in self.images])) if self.images else float("nan")

    def spearman(self, method: str) -> float:
        """Mean rank correlation of one method's maps between the models."""
        values = [d.spearman[method] for d in self.images if method in d.spearman]
        return float(np.mean(values)) if values else float("nan")

    def as_dict(self) -> dict:
        methods = sorted({m for d in self.images for m in d.spearman})
        return {"top1_agreement": self.top1_agreement, "top5_overlap": self.top5_overlap,
                "spearman": {m: self.spearman(m) for m in methods}, "images": [d.as_dict() for d in self.images]}


def layer_in(explainer: "Explainer", layer: str | None) -> str | None:
    """`layer` when the model has that tensor, else the model's own auto layer (quantised graphs rename some)."""
    if layer is None:
        return None
    if layer in explainer.model.tensors:
        return layer
    return explainer.model.resolve_layer("auto")


def image_drift(a: "Explainer", b: "Explainer", image, methods: Sequence[str] = (), layer: str | None = "auto",
                top: int = 5, params: dict[str, dict] | None = None,
                attributions: dict[str, "Attribution"] | None = None) -> ImageDrift:
    """Compare one image through models A and B; B explains A's top-1 class so the maps answer one question.

    `params` maps a method name to its parameters; `attributions` may hold A's maps already computed
    (method -> Attribution for A's top-1 class), as the audit has them.
    """
    from . import methods as registry
    params = params or {}
    batch_a, batch_b = a.prepare([image]), b.prepare([image])
    pred_a, pred_b = a.predict(batch_a, top=top)[0], b.predict(batch_b, top=top)[0]
    top_a = tuple(t[0] for t in pred_a.top)
    scores_b = b.forward(batch_b)[b.output_name(None)].reshape(-1)
    info_b = b.task.output(b.output_name(None)) if hasattr(b, "task") else None
    probs_b = scores_b if info_b is not None and info_b.normalised else _softmax(scores_b)
    prob_b = float(probs_b[top_a[0]]) if top_a[0] < scores_b.size else float("nan")
    spearmans, ssims = {}, {}
    for method in methods:
        uses_layer = registry.get(method).uses_layer
        map_a = (attributions or {}).get(method)
        if map_a is None:
            [map_a] = a.explain(batch_a, method=method, target=top_a[0], layer=layer if uses_layer else None,
                                **params.get(method, {}))
        layer_b = layer_in(b, map_a.layer) if uses_layer else None
        [map_b] = b.explain(batch_b, method=method, target=top_a[0], layer=layer_b, **params.get(method, {}))
        spearmans[method], ssims[method] = similarity(map_a.upsampled, map_b.upsampled)
    return ImageDrift(batch_a.names[0], top_a, tuple(t[0] for t in pred_b.top), float(pred_a.top[0][3]), prob_b,
                      spearmans, ssims)


def drift(a: "Explainer", b: "Explainer", images: Sequence, methods: Sequence[str] = (), layer: str | None = "auto",
          top: int = 5, params: dict[str, dict] | None = None) -> DriftResult:
    """The same images through two models, most drifting first; `params` maps a method name to its parameters."""
    from .progress import progress
    results = [image_drift(a, b, image, methods, layer, top, params)
               for image in progress(list(images), desc="drift", quiet=a.quiet)]
    return DriftResult(tuple(sorted(results, key=ImageDrift.drift_key)))


def _softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()
