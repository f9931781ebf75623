"""The forward-only toolbox: perturbed inputs or edited layer values run in memory-bounded chunks (one
progress bar per image), their target scores, and parameter checks worded one way for every method.

Chunks hold one runtime batch, so memory stays flat whatever the number of perturbations and a reused
input buffer stays small and warm.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import onnx

from ..errors import MethodError
from ..numeric import softmax
from ..progress import progress
from ..targets import ClassTarget, Target
from .layout import channels_first_np

if TYPE_CHECKING:
    from ..images import Prepared
    from ..model import TensorInfo
    from .base import MethodContext

CHUNK_BYTES = 1 << 27  # perturbed copies are built at most this many bytes at a time
SCORES = ("logit", "probability")
T = TypeVar("T")


# ---- chunking ---------------------------------------------------------------------------------------
def batches(count: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` rows over `count` rows."""
    from ..limits import checkpoint
    size = max(1, int(size))
    for start in range(0, count, size):
        checkpoint()  # a deadline passed or the client left: stop between batches
        yield slice(start, min(start + size, count))


def chunks(count: int, row_bytes: int, batch_size: int) -> list[slice]:
    """Slices over `count` rows: one runtime batch each, fewer rows where a batch would hold more than
    CHUNK_BYTES."""
    return list(batches(count, min(batch_size, CHUNK_BYTES // max(int(row_bytes), 1))))


def chunk_size(context: "MethodContext") -> int:
    """Perturbed inputs to build at once: one runtime batch (1 for models with a fixed batch of 1)."""
    return 1 if context.runtime.fixed_batch == 1 else max(1, context.runtime.batch_size)


def run_chunks(context: "MethodContext", parts: Iterable[T], count: int, to_input: Callable[[T], np.ndarray],
               outputs: Sequence[str], desc: str) -> Iterator[tuple[T, dict[str, np.ndarray]]]:
    """Each part (masks, noise, window indices) with the model's outputs on the inputs `to_input` builds from it.

    Parts are pulled lazily, so only one chunk of perturbed inputs exists at a time; one progress bar
    covers all `count` parts.
    """
    for part in progress(parts, desc=desc, quiet=context.quiet or count < 4, total=count, unit="batch"):
        yield part, context.run(to_input(part), outputs)


# ---- scores -----------------------------------------------------------------------------------------
def layer_activations(context: "MethodContext", batch: "Prepared", layer: str
                      ) -> tuple[np.ndarray, "TensorInfo", np.ndarray]:
    """(raw value in the tensor's layout, its TensorInfo, the same as (N, C, h, w)), from the cached forward."""
    info = context.model.spatial_info(layer)
    raw = context.forward(batch, [layer])[layer]
    return raw, info, channels_first_np(raw, info)


def input_scores(context: "MethodContext", target: Target, count: int, row_bytes: int,
                 make: Callable[[slice], np.ndarray], desc: str) -> np.ndarray:
    """Target scores of `count` perturbed inputs built chunk by chunk by `make(rows)` and run through the model."""
    return input_scores_many(context, [target], count, row_bytes, make, desc)[0]


def input_scores_many(context: "MethodContext", targets: Sequence[Target], count: int, row_bytes: int,
                      make: Callable[[slice], np.ndarray], desc: str) -> np.ndarray:
    """(targets, count) scores of every target from one run of the perturbed inputs (see `input_scores`)."""
    slices = chunks(count, row_bytes, context.runtime.batch_size)
    scores = []
    for rows in progress(slices, desc=desc, quiet=context.quiet or len(slices) < 4, unit="batch"):
        scores.append(scores_of(targets, context.run(make(rows))))
    return np.concatenate(scores, axis=1) if scores else np.zeros((len(targets), 0))


def tail_scores(context: "MethodContext", batch: "Prepared", index: int, layer: str, target: Target, count: int,
                make: Callable[[slice], np.ndarray], desc: str) -> np.ndarray:
    """Target scores of `count` edited layer values of image `index` (built by `make(rows)`, in the tensor's own
    layout), run through the model's tail only; tensors crossing the cut are fed unchanged."""
    return tail_scores_many(context, batch, index, layer, [target], count, make, desc)[0]


def tail_scores_many(context: "MethodContext", batch: "Prepared", index: int, layer: str, targets: Sequence[Target],
                     count: int, make: Callable[[slice], np.ndarray], desc: str) -> np.ndarray:
    """(targets, count) scores of every target from one set of tail runs (see `tail_scores`)."""
    cut, runtime = context.tail(layer)
    graph_inputs = {i.name for i in context.model.inputs}
    crossing = {name: batch.x if name in graph_inputs else context.forward(batch, [name])[name]
                for name in cut.crossing}
    row = context.forward(batch, [layer])[layer][index]
    scores = []
    slices = chunks(count, row.nbytes, runtime.batch_size)
    rows_max = max((s.stop - s.start for s in slices), default=0)
    # each image's crossing values repeated once for all chunks (contiguous: onnxruntime copies nothing);
    # a tensor the tail reads only through Shape gets an untouched buffer of its shape
    repeated = {name: _repeated(value[index:index + 1], rows_max, name in _shape_only(runtime, cut.crossing))
                for name, value in crossing.items()}
    for rows in progress(slices, desc=desc, quiet=context.quiet or len(slices) < 4, unit="batch"):
        variants = make(rows)
        feeds = {cut.at: variants, **{name: value[:len(variants)] for name, value in repeated.items()}}
        scores.append(scores_of(targets, runtime.run(feeds)))
    return np.concatenate(scores, axis=1) if scores else np.zeros((len(targets), 0))


def scores_of(targets: Sequence[Target], outputs: dict[str, np.ndarray]) -> np.ndarray:
    """(targets, rows) float64 scores; class targets reading one output the same way share one softmax and one
    gather, so `all` (every class) costs about what one target does."""
    result = np.empty((len(targets), len(next(iter(outputs.values())))))
    groups: dict[tuple, list[int]] = {}
    for k, t in enumerate(targets):
        if type(t) is ClassTarget:
            groups.setdefault((t.output, t.probability and not t.normalised), []).append(k)
        else:
            result[k] = np.asarray(t.score(outputs), np.float64)
    for (output, probability), rows in groups.items():
        value = outputs[output]
        flat = value.reshape(len(value), -1)
        if probability:
            flat = softmax(flat, axis=1)
        result[rows] = flat[:, [targets[k].index for k in rows]].T
    return result


def _repeated(row: np.ndarray, count: int, shape_only: bool) -> np.ndarray:
    """`row` (1, ...) repeated `count` times as one contiguous array; uninitialised when only its shape is read."""
    if shape_only:
        return np.empty((count,) + row.shape[1:], row.dtype)  # fresh pages are never touched: no cost
    return np.repeat(row, count, axis=0)


_SHAPE_ONLY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _shape_only(runtime: Any, names: Sequence[str]) -> frozenset[str]:
    """The tail inputs among `names` that the tail's graph reads only through Shape ops (the input's batch
    size in a Reshape, typically), found once per tail runtime."""
    if runtime not in _SHAPE_ONLY:
        graph = runtime.proto.graph if getattr(runtime, "proto", None) is not None else None
        readers: dict[str, set[str]] = {name: set() for name in names}
        nested = graph is None or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                      for node in graph.node for a in node.attribute)
        for node in () if nested else graph.node:  # subgraphs may read any outer tensor: then none is shape-only
            for name in node.input:
                if name in readers:
                    readers[name].add(node.op_type)
        outputs = set() if nested else {o.name for o in graph.output}
        _SHAPE_ONLY[runtime] = frozenset(n for n, ops in readers.items() if ops == {"Shape"} and n not in outputs)
    return _SHAPE_ONLY[runtime]


def per_channel_cost(params: Any, layer_shape: tuple | None) -> int:
    """Forwards per image of a method that scores each channel of its layer once: one for the batch and one per
    channel (at most `params.channels` when that is set); an unknown channel count counts as one."""
    channels = layer_shape[0] if layer_shape and isinstance(layer_shape[0], int) else 1
    keep = getattr(params, "channels", None)
    return 1 + (min(channels, keep) if isinstance(keep, int) and keep > 0 else channels)


def with_score(target: Target, kind: str) -> Target:
    """The target scoring logits or softmax probabilities as `kind` says; callable targets stay as given."""
    if isinstance(target, ClassTarget):
        return dataclasses.replace(target, probability=kind == "probability")
    return target


def image_score(target: Target, outputs: dict[str, np.ndarray], i: int) -> float:
    """The target's score of image `i` in a batch of outputs."""
    return float(target.score({k: v[i:i + 1] for k, v in outputs.items()})[0])


# ---- parameter checks ----------------------------------------------------------------------------
def choose(method: str, key: str, value: Any, choices: Sequence[str]) -> str:
    """`value` when it is one of `choices`, else a MethodError naming them (the one wording for every method)."""
    if value not in choices:
        raise MethodError(f"Parameter '{key}' of method '{method}' cannot be '{value}'; use one of "
                          f"{', '.join(choices)}.")
    return value


def optional_count(method: str, name: str, value) -> int | None:
    """A positive int or None from a parameter that may arrive as a CLI string."""
    if value is None or value in ("", "none", "None", "all"):
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise MethodError(f"Parameter '{name}' of method '{method}' must be a positive whole number or None, "
                          f"not {value!r}.")
    return count


def pair(method: str, key: str, value, auto: tuple[int, int]) -> tuple[int, int]:
    """(h, w) from an int or a pair; zeros take the `auto` value; anything else raises a MethodError."""
    values = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 2 or any(not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise MethodError(f"Parameter '{key}' of method '{method}' must be whole pixels >= 1 as (h, w) or one "
                          f"number (0 = automatic), not {value!r}.")
    return (int(values[0]) or auto[0], int(values[1]) or auto[1])
