"""The Explainer: one loaded model, its sessions and (lazily) its torch module, behind one API."""
from __future__ import annotations

import functools
import logging
import math
import os
import sys
from dataclasses import asdict, replace
from typing import Any, Sequence

import numpy as np

from . import autolayer
from . import methods as method_registry
from .devices import plan_devices
from .errors import DeviceError, ImageError, MethodError, ModelError, UserError
from .heatmaps import ImageHeatmaps
from .images import ImageSource, InputSpec, Prepared, Preprocess, prepare, preset
from .limits import CLI, MAX_FORWARDS, MAX_OUTPUT_SIDE, MAX_PIXELS, LimitError, Limits, Remedy
from .methods.base import Attribution, Method
from .model import Model
from .memory import per_image_bytes
from .numeric import softmax
from .predictions import Prediction, read_labels, structured_prediction
from .runtime import BatchedRuntime, Runtime, TorchRuntime, one_thread_blas
from .rowprune import pruned_split
from .surgery import Split, split
from .mapcheck import map_warnings_many
from .targets import BoxLayout, Context, Target, resolve, target_count
from .task import understand

log = logging.getLogger(__name__)


def warn_nonfinite(what: str, values: np.ndarray) -> bool:
    """Log a warning when `values` hold NaN or infinity (JSON writes them as null); True when they do."""
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        log.warning("%s holds %d NaN or infinite value(s) of %d; the model's weights or its input may be broken.",
                    what, bad, np.size(values))
    return bool(bad)


def check_inputs(model: Model, image_input: str, limits: Limits) -> None:
    """Refuse a model onnxplain cannot feed: required inputs besides the image, or absurd image dims."""
    others = [i for i in model.inputs if i.name != image_input]
    if others:
        names = ", ".join(f"'{i.name}' ({i.dtype} {list(i.shape)})" for i in others)
        raise ModelError(f"The model needs input(s) {names} besides the image '{image_input}', and onnxplain feeds "
                         "only the image; bake the others in as constants (e.g. make them initializers with onnx or "
                         "onnx-ir) or re-export the model with the image as its only input.")
    image = next(i for i in model.inputs if i.name == image_input)
    dims = [d for d in image.shape if isinstance(d, int)]
    if any(d > limits.max_pixels for d in dims) or (len(dims) == len(image.shape) and
                                                     math.prod(dims) > 4 * limits.max_pixels):
        raise LimitError(f"The model's input '{image_input}' has dims {list(image.shape)}, far more than an image "
                         f"of {limits.max_pixels / 1e6:g} megapixels; re-export it with a real image size.")


class Explainer:
    """Explain one ONNX image model: predictions, heatmaps by any registered method, on CPU or CUDA.

    `preprocess` is a preset name or a Preprocess; when None, the model's metadata
    (`onnxplain.preset`) or `imagenet` is used. Labels come from `labels`, or from the
    model's metadata (`onnxplain.labels`, a file beside the model).

    `engine` runs the forward-only methods on onnxruntime ("ort") or on the torch converter ("torch",
    same results); "auto" is ort, except that device "cuda" switches to torch (with a logged warning) when
    onnxruntime cannot use CUDA but torch can. `batch_size` is the most images per forward pass; fewer
    are run when the free memory of the device is short for the model's activations. `threads` sets
    onnxruntime's intra-op threads (None: one per core), as batch jobs and Ray actors need.
    """

    def __init__(self, model: str | os.PathLike | bytes | Model, preprocess: str | Preprocess | None = None,
                 device: str = "auto", labels: str | os.PathLike | Sequence[str] | None = None,
                 batch_size: int = 32, quiet: bool = False, input_name: str | None = None,
                 input_size: tuple[int, int] | str | None = None, engine: str = "auto", resize: str | None = None,
                 order: str | None = None, layout: str | None = None, detector: str | None = None,
                 threads: int | None = None, max_pixels: int = MAX_PIXELS,
                 max_forwards: int = MAX_FORWARDS, max_output_side: int = MAX_OUTPUT_SIDE):
        self.limits = Limits(max_pixels, max_forwards, max_output_side)
        self.threads = threads
        self.model = Model.load(model)
        self.task = understand(self.model, input_size, resize, order, layout, detector,
                               preprocess if isinstance(preprocess, str) else None,
                               labels if isinstance(labels, (list, tuple)) else None)
        self.input = next((i for i in self.model.inputs if i.name == input_name), self.model.inputs[0]) \
            if self.model.inputs else None
        if self.input is None:
            raise UserError("The model has no inputs to feed an image to.")
        if input_name and self.input.name != input_name:
            raise UserError(f"The model has no input named '{input_name}'.")
        check_inputs(self.model, self.input.name, self.limits)
        self.spec = InputSpec.from_shape(self.input.name, self.input.shape)
        if self.task.layout.source == "option":
            self.spec = replace(self.spec, layout=self.task.layout.value)
        task = self.task
        given = isinstance(preprocess, Preprocess)  # a Preprocess given whole keeps its resize and order
        self.preprocess = preset(preprocess if given else task.preset.value, size=task.input_size.value,
                                 resize=task.resize.value if not given or task.resize.source == "option" else None,
                                 order=task.order.value if not given or task.order.source == "option" else None)
        self.labels = read_labels(labels if labels is not None else self._metadata_labels())
        if self.labels is None and isinstance(task.labels.value, list):
            self.labels = task.labels.value
        plan = plan_devices(device, engine, self._convertible)
        if plan.note:
            log.warning(plan.note)
        if plan.engine == "torch" and not self._convertible():
            raise MethodError("Engine torch needs the torch converter, which cannot run this model "
                              "(see `onnxplain inspect`); use engine ort.")
        self.providers, self.engine, self.device = plan.providers, plan.engine, plan.device
        self._torch_device, self._torch_problem = plan.torch_device, plan.torch_problem
        self.quiet = quiet
        self._module = None
        self._auto_layers: dict[str, tuple[str, str]] = {}
        self._splits: dict[str, tuple[Split, BatchedRuntime]] = {}
        footprint = per_image_bytes((t.dtype, t.shape) for t in self.model.tensors.values())
        self.runtime = self._runtime(self.model.proto, batch_size, footprint)

    def twin(self, proto) -> "Explainer":
        """An Explainer like this one (preprocessing, labels, device, engine, batch size) for another ModelProto.

        Meant for the same graph with other weights (the randomisation sanity check): such a twin reuses
        this model's tensor index (Model.reweighted), so it skips shape inference and the probe run.
        """
        return Explainer(self.model.reweighted(proto), preprocess=self.preprocess, device=self.device,
                         labels=self.labels, batch_size=self.runtime.batch_size, quiet=self.quiet,
                         input_name=self.input.name, input_size=self.model.probe_size, engine=self.engine,
                         max_pixels=self.limits.max_pixels, max_forwards=self.limits.max_forwards,
                         max_output_side=self.limits.max_output_side)

    @property
    def torch_device(self) -> str:
        """Where torch runs: gradient methods, and forward-only methods with engine torch."""
        if self._torch_problem:
            raise DeviceError(f"CUDA was asked for but {self._torch_problem}.")
        return self._torch_device

    def _runtime(self, proto, batch_size: int, per_image: int | None = None) -> BatchedRuntime:
        """A runtime for `proto` (the model, or a tail of it) on this explainer's engine and device."""
        if self.engine == "torch":
            return TorchRuntime(proto, lambda: self.module, self.torch_device, batch_size, self.quiet, per_image)
        return Runtime(proto, self.providers, batch_size, self.quiet, per_image, self.threads)

    def _convertible(self) -> bool:
        """Whether the torch converter takes this model (cheap: nothing is built)."""
        try:
            import onnxtorch
        except ImportError:  # pragma: no cover - the converter ships with onnxplain
            return False
        return onnxtorch.problem(self.torch_proto) is None

    def _metadata_labels(self) -> str | None:
        name = self.model.metadata.get("onnxplain.labels")
        if name and self.model.path is not None:
            path = (self.model.path.parent / name).resolve()
            if path.parent == self.model.path.parent.resolve() and path.is_file():
                return str(path)
        return None

    # ---- forward passes -------------------------------------------------------------------
    def prepare(self, images: Sequence[ImageSource] | ImageSource | Prepared,
                files: Sequence[str | None] | None = None) -> Prepared:
        """Decode and preprocess images into one batch (a Prepared batch passes through); `files` names the
        file each encoded image was read from, for error sentences."""
        if isinstance(images, Prepared):
            return images
        if isinstance(images, (str, os.PathLike, bytes)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            images = [images]
        if not isinstance(images, (list, tuple, np.ndarray)):
            raise ImageError(f"Images must be a path, encoded bytes, an array or a list of these, not "
                             f"{type(images).__name__}.")
        return prepare(list(images), self.spec, self.preprocess, self.limits, files)

    def forward(self, batch: Prepared, outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Model outputs plus the requested tensors for the batch, computed once and kept in batch.cache."""
        wanted = list(dict.fromkeys(list(self.runtime.output_names) + list(outputs)))
        missing = [n for n in wanted if n not in batch.cache]
        if missing:
            self.model.check_names(missing)
            batch.cache.update(self.runtime.run(batch.x, missing))
        return {n: batch.cache[n] for n in wanted}

    def run(self, x: np.ndarray, outputs: Sequence[str] | None = None, desc: str | None = None) -> dict:
        """Run arbitrary inputs (e.g. perturbed copies) through the model, batched."""
        return self.runtime.run(x, outputs, desc=desc)

    def output_name(self, output: str | None) -> str:
        names = [o.name for o in self.model.outputs]
        if output is None:
            return self.task.default_output or names[0]
        if output not in names:
            raise UserError(f"The model has no output named '{output}' (outputs: {', '.join(names)}).")
        return output

    def tail(self, layer: str) -> tuple[Split, BatchedRuntime]:
        """The model split at `layer` and a runtime for its tail (on the explainer's engine), built once per layer."""
        if layer not in self._splits:
            cut = pruned_split(split(self.model.proto, layer), self.model)  # a ViT head's one row: see rowprune
            tail = self._runtime(cut.tail, self.runtime.batch_size)
            if self.runtime.fixed_batch == 1:  # a static-batch export bakes batch 1 into its Reshape constants
                tail.fixed_batch = 1
            self._splits[layer] = (cut, tail)
        return self._splits[layer]

    @functools.cached_property
    def torch_proto(self):
        """The model as the torch converter takes it: float16/bfloat16 models upcast to float32."""
        import onnxtorch
        return onnxtorch.upcast_half(self.model.proto)

    @property
    def module(self):
        """The OnnxModule converted from this model, on the torch device (built once)."""
        if self._module is None:
            try:
                import onnxtorch
            except ImportError as exc:  # pragma: no cover - the converter ships with onnxplain
                raise MethodError(f"The torch converter cannot be imported ({exc}).") from None
            try:
                self._module = onnxtorch.to_torch(self.torch_proto).to(self.torch_device).eval()
            except onnxtorch.UnsupportedOp as exc:
                ort_methods = ", ".join(m["name"] for m in method_registry.list_methods() if m["engine"] == "ort")
                ops = ", ".join(f"{op} (node '{node}')" for op, _, node in exc.missing)
                raise MethodError(f"The torch converter cannot run {ops} of this model, which gradient methods "
                                  f"need; these methods still work: {ort_methods}.") from None
            except onnxtorch.ConversionError as exc:
                raise MethodError(f"The torch converter cannot take this model ({exc}); use a method that runs "
                                  "on onnxruntime (see `onnxplain methods`).") from None
        return self._module

    # ---- public API -----------------------------------------------------------------------
    def predict(self, images, top: int = 5, output: str | None = None) -> list[Prediction]:
        """Top-k classes with names (when labels are known) and probabilities for each image."""
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
            raise UserError(f"top must be a whole number of at least 1, not {top!r}.")
        batch = self.prepare(images)
        output = self.output_name(output)
        info = self.task.output(output)
        value = self.forward(batch)[output]
        if info is not None and info.kind in ("sequence", "detection rows", "detection scores", "dense map"):
            return [structured_prediction(name, output, info, v, top, self.label, self.task.dictionary.value)
                    for name, v in zip(batch.names, value)]
        scores = value.reshape(len(batch), -1)
        warn_nonfinite(f"The model's output '{output}'", scores)
        results = []
        for name, row in zip(batch.names, scores):
            probs = row if info is not None and info.normalised else softmax(row)
            order = np.argsort(-row)[:top]
            results.append(Prediction(name, output, [(int(i), self.label(int(i)), float(row[i]), float(probs[i]))
                                                     for i in order]))
        return results

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels and index < len(self.labels) else ""

    def explain(self, images, method: str = "grad-cam", target: Any = "predicted", layer: str | None = "auto",
                output: str | None = None, probability: bool = False, box_layout: BoxLayout | None = None,
                **params) -> list[Attribution]:
        """Explain each image for its target(s) with one method; one Attribution per image and target.

        `target`: predicted | INDEX | topK | all (every class) | class name | box:x1,y1,x2,y2[:class] |
        region:x1,y1,x2,y2[:channel] (original pixels) | a Target | a callable on the outputs dict | a list with one of these per image.
        `output` picks the model output by name (default: the first); `box_layout` describes detector rows.
        """
        if not isinstance(method, str):
            raise MethodError(f"method must be a method's name (text), not {type(method).__name__}.")
        if layer is not None and not isinstance(layer, str):
            raise UserError(f"layer must be a tensor name, auto or last-conv (text), not {type(layer).__name__}.")
        cls = method_registry.get(method)
        method_params = cls.make_params(**params)
        batch = self.prepare(images)
        output = self.output_name(output)
        auto = cls.uses_layer and layer in (None, "", "auto")
        layer_name = self.model.resolve_layer(layer, output) if cls.uses_layer and not auto else None
        why = None
        if auto and output in self._auto_layers:  # chosen and probed on an earlier call
            layer_name, why = self._auto_layers[output]
        if layer_name is not None and cls.engine == "ort":
            self.model.spatial_info(layer_name)
        # a named layer of an onnxruntime method comes with the same forward, not a second one
        exposed = [layer_name] if layer_name is not None and cls.engine == "ort" else []
        if auto and layer_name is None:  # the probe checks the graph's guess first: it comes with this forward
            exposed = self._graph_layer(output)
        per_image = resolve(target, self._context(batch, output, probability, box_layout, exposed))
        index = [i for i, targets in enumerate(per_image) for _ in targets]
        flat_targets: list[Target] = [t for targets in per_image for t in targets]
        if auto and layer_name is None:  # chosen (and probed, on the first target's image) once per output
            first = batch if index[:1] in ([], [0]) else batch.select(index[:1])
            self._auto_layers[output] = layer_name, why = autolayer.choose(self, first, output, flat_targets,
                                                                           probe=True)
        self.limits.check_forwards(cls.name, cls.cost(method_params, batch.hw, self._layer_shape(layer_name)),
                                   1 if cls.multi_target else max(map(len, per_image)))  # before any copy
        if cls.multi_target:  # one set of forwards per image serves all its targets
            raw = self._run_method(cls(method_params), batch, per_image, layer_name, many=True)
        else:  # one row per target: a copy of the inputs and cached outputs
            work = batch if len(index) == len(batch) else batch.select(index)
            raw = self._run_method(cls(method_params), work, flat_targets, layer_name)
        extras = [{**e, "auto_layer": why} if why else e for e in raw.extras]
        # once per image, not per target: what the model saw, and the heatmaps made (batched) on first read
        heatmaps = {j: ImageHeatmaps(batch.hw, batch.pixel_maps[j]) for j in set(index)}
        checks = map_warnings_many(raw.maps)  # every map checked in one pass
        return [self._attribution(cls, method_params, batch, index[i], t, layer_name, raw.maps[i], extras[i],
                                  output, heatmaps[index[i]], checks[i]) for i, t in enumerate(flat_targets)]

    def _graph_layer(self, output: str) -> list[str]:
        """[the graph's auto layer], the tensor the probe reads first, or [] where the graph has none."""
        try:
            return [self.model.auto_layer(output)[0]]
        except UserError:
            return []

    def check_cost(self, method: str, params: dict | None = None, layer: str | None = "auto",
                   output: str | None = None, target: Any = None, remedy: Remedy = CLI) -> int:
        """The forward passes per image that `method` with `params` would need here; LimitError over
        max_forwards, times `target`'s count (topK, all, a list) for a method run once per target, as explain
        does, its advice worded by `remedy`. Cheap (no model run): the server calls it before queueing."""
        cls = method_registry.get(method)
        method_params = cls.make_params(**(params or {}))
        output = self.output_name(output)
        layer_name = self.model.resolve_layer(layer, output) if cls.uses_layer else None
        forwards = cls.cost(method_params, self.input_hw, self._layer_shape(layer_name))
        info = self.task.output(output)
        targets = 1 if cls.multi_target else target_count(target, info.classes if info else None)
        self.limits.check_forwards(cls.name, forwards, targets, remedy)
        return forwards

    @property
    def input_hw(self) -> tuple[int, int]:
        """The model-input size images are resized to."""
        return self.spec.size or self.preprocess.size or (224, 224)

    def _layer_shape(self, layer: str | None) -> tuple | None:
        """(C, h, w) of a spatial layer (None where unknown), what method costs depend on."""
        info = self.model.tensors.get(layer) if layer is not None else None
        if info is None or not info.spatial:
            return None
        return (info.channels,) + tuple(info.hw or (None, None))

    def _context(self, batch: Prepared, output: str, probability: bool = False,
                 box_layout: BoxLayout | None = None, exposed: Sequence[str] = ()) -> Context:
        """What resolving a target on `output` needs: the outputs (and `exposed` tensors, from the same
        forward), geometry, labels and the output's kind."""
        info = self.task.output(output)
        return Context(self.forward(batch, exposed), output, self.labels, probability, batch.pixel_maps, batch.hw,
                       box_layout or (info.box_layout if info is not None and info.box_layout else BoxLayout()),
                       kind=info.kind if info is not None else "", normalised=bool(info and info.normalised),
                       dictionary=self.task.dictionary.value)

    def auto_layer(self, images=None, output: str | None = None, target: Any = "predicted") -> tuple[str, str]:
        """(tensor, why) that explain(layer="auto") uses for `target` on the first image (a fixed noise image
        when none is given): the auto-layer probe, not only the graph's last spatial tensor."""
        if images is None:
            h, w = self.spec.size or self.model.probe_size or (224, 224)
            images = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        batch = self.prepare(images)
        batch = batch.select([0]) if len(batch) > 1 else batch
        output = self.output_name(output)
        targets = resolve(target, self._context(batch, output))[0]
        return autolayer.choose(self, batch, output, targets, probe=True)

    def explain_bytes(self, image_bytes: bytes, method: str = "grad-cam", **kwargs) -> list[Attribution]:
        """Explain one encoded image (PNG, JPEG, ... as bytes), as a server receives it; never reads a path.

        Keyword arguments are those of `explain` (target, layer, output, probability, method params).
        """
        if not isinstance(image_bytes, (bytes, bytearray, memoryview)):
            raise ImageError("explain_bytes takes the encoded image as bytes, not a path; read the file first.")
        return self.explain(self.prepare(bytes(image_bytes)), method=method, **kwargs)

    def _run_method(self, method: Method, batch: Prepared, targets: list, layer: str | None, many: bool = False):
        """Run a method (`many`: a list of targets per image); an op the converter refuses at run time (an
        unsupported mode) is a user-facing error."""
        try:
            with one_thread_blas:
                if many:
                    return method.explain_many(self, batch, targets, layer)
                return method.explain(self, batch, targets, layer)
        except Exception as exc:
            converter = sys.modules.get("onnxtorch")  # loaded only when a torch method ran
            if converter is not None and isinstance(exc, converter.ConversionError):
                raise MethodError(f"Method '{method.name}' cannot run on this model: {exc}; use a method that "
                                  "runs on onnxruntime (see `onnxplain methods`).") from None
            raise

    def _attribution(self, cls: type[Method], params: Any, batch: Prepared, image: int, target: Target,
                     layer: str | None, raw: np.ndarray, extras: dict, output: str,
                     heatmaps: ImageHeatmaps, checks: list[str]) -> Attribution:
        warn_nonfinite(f"Method '{cls.name}''s map of '{batch.names[image]}'", raw)
        upsampled, heatmap = heatmaps.add(raw)  # made on first read; outside the crop (not seen) 0
        extras = dict(extras)
        warnings = tuple(extras.pop("warnings", ())) + tuple(checks)  # the method's, then the map's
        if self.model.weight_suspect:  # +inf weights; -inf alone (attention masks) is only inspect's
            warnings += (self.model.weight_note,)
        return Attribution(method=cls.name, params=asdict(params), target=target.describe(), layer=layer,
                           raw=raw, upsampled=upsampled, heatmap=heatmap, valid=heatmaps.valid,
                           scores=batch.cache[output][image], image=batch.originals[image],
                           image_name=batch.names[image], extras=extras, warnings=warnings)

