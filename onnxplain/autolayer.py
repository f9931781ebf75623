"""The auto layer that works: the last spatial tensor whose positions the target's score depends on.

The last spatial tensor on the path to the output is not always read position by position: a ViT's final
LayerNorm is read only at its class token, so maps from it are constant or zero. Token tensors read
only at token 0 (a Gather or Slice of token 0 before any op that mixes tokens) are skipped from the graph
alone (layerpick.py, what Model.auto_layer answers); the tensor chosen is then checked with one probe (its
positions zeroed, the tail run once) and the walk goes back while the target's score does not move.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .layerpick import candidates, class_token_only, pick  # noqa: F401  (the graph part, re-exported)

if TYPE_CHECKING:
    from .explainer import Explainer
    from .images import Prepared
    from .model import TensorInfo
    from .targets import Target

log = logging.getLogger(__name__)


def depends(explainer: "Explainer", batch: "Prepared", info: "TensorInfo", target: "Target") -> bool:
    """One probe: does the target's score on image 0 move when the tensor's positions (not a class token) are 0?"""
    from .methods.perturb import tail_scores
    value = explainer.forward(batch, [info.name])[info.name][:1]
    base = float(np.asarray(target.score({k: v[:1] for k, v in explainer.forward(batch).items()}))[0])
    zeroed = value.copy()
    if info.layout == "tokens":
        extra = zeroed.shape[1] - info.grid[0] * info.grid[1]
        zeroed[:, extra:] = 0
    else:
        zeroed[...] = 0
    score = float(tail_scores(explainer, batch, 0, info.name, target, 1, lambda rows: zeroed, desc="auto layer")[0])
    return abs(score - base) > 1e-6 * (1 + abs(base))


def choose(explainer: "Explainer", batch: "Prepared", output: str, targets: Sequence["Target"],
           probe: bool = True) -> tuple[str, str]:
    """(tensor name, why) of the auto layer for these targets on `output`."""
    keep = (lambda info: _probe_ok(explainer, batch, info, targets[0])) if probe and targets else None
    return pick(explainer.model, output, keep)


def _probe_ok(explainer: "Explainer", batch: "Prepared", info: "TensorInfo", target: "Target") -> bool:
    """The probe, where it can run; a tensor the split or the tail cannot take is kept (the method says why)."""
    try:
        return depends(explainer, batch, info, target)
    except Exception as exc:  # noqa: BLE001 - the probe is advice; the method itself reports real errors
        log.debug("auto-layer probe on %s failed: %s", info.name, exc)
        return True
