"""What `inspect` shows about the task: per output its kind, the targets and methods that fit, read vs guessed."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .task import understand

if TYPE_CHECKING:
    from .model import Model
    from .task import Task


def inspect_task(model: "Model", task: "Task | None" = None, **options) -> dict:
    """For each output its kind, the targets and methods that fit, and what was read vs guessed; never raises
    on a model onnxruntime can load (what could not be worked out is named under "problems").

    `task` is the one an Explainer already holds; without it the model is read here with `options`."""
    problems: list[str] = []
    try:
        task = task if task is not None else understand(model, **options)
    except Exception as exc:  # noqa: BLE001 - inspect reports, it does not stop
        problems.append(f"the task could not be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        task = None
    report = task.describe() if task is not None else {"outputs": []}
    try:
        from .methods import list_methods
        methods = list_methods()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"the methods could not be listed ({exc})")
        methods = []
    try:
        spatial = bool(model.spatial_layers)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"the layers could not be indexed ({exc})")
        spatial = False
    for entry in report["outputs"]:
        entry["methods"] = [m["name"] for m in methods if methods_fit(m, entry["kind"], spatial)]
    report["read"] = sorted(k for k, v in report.items() if isinstance(v, dict) and v.get("read"))
    report["guessed"] = sorted(k for k, v in report.items() if isinstance(v, dict) and v.get("read") is False)
    report["problems"] = problems
    return report


def methods_fit(method: dict, kind: str, spatial: bool) -> bool:
    """Whether a registered method (list_methods entry) can explain an output of this kind."""
    if method["name"] == "cam" and kind not in ("class logits", "probabilities"):
        return False  # CAM reads a global-pooling + linear head's class weights
    if kind in ("boxes",):
        return False
    return spatial or not method.get("uses_layer", False)
