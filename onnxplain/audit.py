"""Deployment-side audit: explanations of a folder of images with faithfulness, localisation, sanity and
drift metrics, written as one self-contained HTML report and `audit.json`, with CI thresholds.

Only the standard library is imported at module level; numpy, onnxruntime and the methods load when an
audit runs. The command is `onnxplain audit` (onnxplain/cli/audit.py).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .audit_gates import METRICS, Threshold, check_thresholds, format_summary, parse_threshold
from .audit_log import marked_overlay, thumb_png
from .errors import UserError
from .writing import check_out, transaction

if TYPE_CHECKING:
    from .explainer import Explainer

__all__ = ["Audit", "AuditOptions", "METRICS", "Threshold", "check_thresholds", "format_summary", "list_images",
           "parse_method_params", "parse_threshold", "run_audit"]

SCHEMA_VERSION = 1



# ---- options and inputs ------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditOptions:
    """How the metrics are computed; defaults follow the papers where they say."""
    methods: tuple[str, ...] = ("grad-cam",)
    layer: str = "auto"
    params: dict = field(default_factory=dict)  # method name -> {parameter: value}
    steps: int = 32
    probability: bool = True
    deletion_baseline: str = "zero"
    insertion_baseline: str = "blur"
    tolerance: float = 15.0
    sanity: bool = True
    sanity_images: int = 1  # sized so 5 photos with grad-cam and occlusion, an int8 compare and the sanity check
    sanity_steps: int = 2   # take under 5 minutes on a 2-core CPU (see the README); raise them for a stricter check
    top: int = 5


def list_images(source: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Image files of a folder (recursively, sorted by path), a manifest (onnxplain.jobs.list_inputs) or one
    image file; at most `limit`."""
    from .jobs import list_inputs
    paths = [Path(item.path) for item in list_inputs(source)]
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be at least 1, not {limit}.")
        paths = paths[:limit]
    return paths


def parse_method_params(pairs: Sequence[str], methods: Sequence[str]) -> dict[str, dict]:
    """`METHOD:KEY=VALUE` strings as {method: {key: value}}, typed and checked against each method's parameters."""
    from . import methods as registry
    from .params import split_pair
    params: dict[str, dict] = {}
    for pair in pairs:
        target, value = split_pair(pair, "rise:n=1000")
        method, _, key = target.partition(":")
        if not key.strip() or method not in methods:
            raise UserError(f"Parameter '{pair}' is not METHOD:KEY=VALUE for one of the audited methods; "
                            "write e.g. -p rise:n=1000.")
        params.setdefault(method, {})[key.strip().replace("-", "_")] = value
    for method, given in params.items():
        params[method] = {k: getattr(registry.get(method).make_params(**given), k) for k in given}
    return params


# ---- the audit ----------------------------------------------------------------------------------
class Audit:
    """Runs the audit image by image, appending each record to `audit.log.jsonl` and each thumbnail to
    `thumbs/`; `write` builds `audit.json` and the HTML from the log (memory stays flat over the images)."""

    def __init__(self, explainer: "Explainer", other: "Explainer | None", options: AuditOptions,
                 boxes: dict | None, root: Path, out: Path, thresholds: Sequence[Threshold] = (),
                 model_paths: Sequence[str] = ()):
        self.explainer, self.other, self.options = explainer, other, options
        self.boxes, self.root, self.out = boxes, root, out
        self.thresholds = list(thresholds)
        self.model_paths = list(model_paths)
        from .audit_log import AuditLog
        self.log = AuditLog(out)
        self.cost: dict | None = None  # the plan in forward passes, when worked out before the run
        self.sanity: dict[str, Any] = {}
        self.drift_skipped: dict[str, str] = {}  # method -> why the second model cannot run it
        self.interrupted = False
        self.finished = False  # every image and the sanity check done: only then is the report "complete"
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")

    @property
    def records(self) -> list[dict]:
        """Every record so far, read back from the log."""
        return list(self.log.records())

    @property
    def thumbs(self):
        """key -> base64 PNG, read from the thumbnail files when the HTML asks."""
        return self.log.thumb_map()

    def _thumb(self, key: str, image) -> None:
        self.log.put_thumb(key, thumb_png(image))

    def layer_for(self, method: str) -> str | None:
        from . import methods as registry
        return self.options.layer if registry.get(method).uses_layer else None

    def add_image(self, path: Path) -> dict:
        """Predict, explain with every method, measure, and (with a second model) compare one image."""
        from .errors import ImageError
        from .metrics import boxes_for, deletion_insertion, image_drift, pointing_hit
        explainer, options = self.explainer, self.options
        key = str(self.log.count)
        name = _display_name(path, self.root)
        try:
            batch = explainer.prepare([str(path)])
        except ImageError as exc:
            record = {"id": key, "image": name, "error": str(exc)}
            self.log.append(record)
            return record
        [prediction] = explainer.predict(batch, top=options.top)
        index, label, _, probability = prediction.top[0]
        h, w = batch.originals[0].shape[:2]
        record: dict[str, Any] = {
            "id": key, "image": name, "size": [w, h],
            "prediction": {"index": index, "name": label, "probability": probability},
            "top": [{"index": i, "name": n, "probability": p} for i, n, _, p in prediction.top],
            "methods": {}}
        self._thumb(key + "/image", batch.originals[0])
        boxes = boxes_for(self.boxes, path, self.root) if self.boxes is not None else None
        if boxes is not None:
            record["boxes"] = [list(b) for b in boxes]
        attributions = {}
        for method in options.methods:
            [attribution] = explainer.explain(batch, method=method, target=index, layer=self.layer_for(method),
                                              **options.params.get(method, {}))
            attributions[method] = attribution
            deletion, insertion = deletion_insertion(
                explainer, batch.x[0], attribution.upsampled, index, steps=options.steps,
                probability=options.probability, deletion_baseline=options.deletion_baseline,
                insertion_baseline=options.insertion_baseline)
            entry = {"layer": attribution.layer, "deletion": deletion.auc, "insertion": insertion.auc,
                     "curves": {"deletion": [float(s) for s in deletion.scores],
                                "insertion": [float(s) for s in insertion.scores]}}
            if boxes is not None:
                entry["pointing"] = pointing_hit(attribution.heatmap, boxes, options.tolerance)
            record["methods"][method] = entry
            self._thumb(f"{key}/{method}", marked_overlay(attribution, boxes))
        if self.other is not None:
            methods = [m for m in options.methods if m not in self.drift_skipped]
            drift = image_drift(explainer, self.other, str(path), methods, options.layer, options.top,
                                options.params, attributions)
            names = self.other.labels or []
            record["compare"] = {
                "prediction": {"index": drift.top_b[0],
                               "name": names[drift.top_b[0]] if drift.top_b[0] < len(names) else ""},
                "probability_of_top1": drift.probability_b, "top1_agree": drift.top1_agree,
                "top5_overlap": drift.top5_overlap, "spearman": drift.spearman, "ssim": drift.ssim}
        self.log.append(record)
        return record

    def add_sanity(self, paths: Sequence[Path]) -> None:
        """The randomisation sanity check of every method on the first images."""
        from .metrics import sanity_check
        from .render import colorize, normalise
        usable = [str(p) for p, r in zip(paths, self.records) if "error" not in r][:self.options.sanity_images]
        if not usable:
            return
        for method in self.options.methods:
            result = sanity_check(self.explainer, usable, method, layer=self.layer_for(method),
                                  depths=self.options.sanity_steps, independent=self.options.sanity_steps,
                                  progress_desc=f"sanity {method}", **self.options.params.get(method, {}))
            self.sanity[method] = result.as_dict()
            self._thumb(f"sanity/{method}/original", colorize(normalise(result.original)))
            for k, step in enumerate(result.steps):
                if step.example is not None:
                    self._thumb(f"sanity/{method}/{k}", colorize(normalise(step.example)))

    def ordered(self, records: Sequence[dict] | None = None) -> list[dict]:
        """Records in report order: with a second model the images that drift most first, else by name."""
        records = [r for r in (self.records if records is None else records) if "error" not in r]
        if self.other is None:
            return sorted(records, key=lambda r: r["image"])

        def drift_key(r):
            c = r["compare"]
            values = list(c["spearman"].values())
            return (c["top1_agree"], c["top5_overlap"], sum(values) / len(values) if values else 1.0)
        return sorted(records, key=drift_key)

    def summary(self, records: Sequence[dict] | None = None) -> dict:
        """Per-method means and the model-level agreement: the values thresholds are checked against."""
        records = self.records if records is None else records
        done = [r for r in records if "error" not in r]
        methods = {}
        for method in self.options.methods:
            entries = [r["methods"][method] for r in done if method in r["methods"]]
            pointed = [e["pointing"] for e in entries if "pointing" in e]
            values: dict[str, Any] = {
                "deletion": _mean([e["deletion"] for e in entries]),
                "insertion": _mean([e["insertion"] for e in entries]),
                "pointing": _mean([float(p) for p in pointed]) if self.boxes is not None else None,
                "pointing_images": len(pointed),
                "mean_curves": {kind: _mean_curve([e["curves"][kind] for e in entries])
                                for kind in ("deletion", "insertion")}}
            if method in self.sanity:
                s = self.sanity[method]
                values.update(sanity=1.0 if s["passed"] else 0.0, sanity_spearman=s["final_spearman"],
                              sanity_ssim=s["final_ssim"])
            elif self.options.sanity:
                values.update(sanity=None, sanity_spearman=None, sanity_ssim=None)
            if self.other is not None:
                values["drift_spearman"] = _mean([r["compare"]["spearman"][method] for r in done
                                                  if method in r["compare"]["spearman"]])
            methods[method] = values
        summary: dict[str, Any] = {"images": len(done), "errors": len(records) - len(done), "methods": methods}
        if self.other is not None:
            summary["top1_agreement"] = _mean([float(r["compare"]["top1_agree"]) for r in done])
            summary["top5_overlap"] = _mean([r["compare"]["top5_overlap"] for r in done])
        return summary

    def report(self) -> dict:
        """Everything the audit found, JSON-ready (no images), built from the log."""
        records = self.records
        summary = self.summary(records)
        options = asdict(self.options)
        return {
            "schema_version": SCHEMA_VERSION, "started": self.started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "complete": self.finished and not self.interrupted, "models": self.model_paths,
            "preprocess": asdict(self.explainer.preprocess), "device": self.explainer.device,
            "options": options, "summary": summary,
            "thresholds": [{"metric": t.label, "bound": t.bound, "value": t.value} for t in self.thresholds],
            "violations": check_thresholds(summary, self.thresholds),
            "sanity": self.sanity, "drift_skipped": self.drift_skipped,
            "metrics": {name: meta[3] for name, meta in METRICS.items()},
            "images": self.ordered(records), "errors": [r for r in records if "error" in r],
            "cost": self.cost, "log": self.log.path.name}

    def write(self, html: bool = True) -> dict:
        """Rewrite audit.json (and audit.html) from what is done so far; returns the report."""
        from .report import write_html
        from .writing import dumps, write_text
        report = self.report()
        write_text(self.out / "audit.json", dumps(report, 1, "audit.json"))
        if html:
            write_html(report, self.thumbs, self.out / "audit.html")
        return report


def run_audit(model: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
              options: AuditOptions | None = None, compare: str | os.PathLike | None = None,
              boxes: str | os.PathLike | None = None, thresholds: Sequence[Threshold] = (),
              preset: str | None = None, labels: str | os.PathLike | None = None, device: str = "auto",
              limit: int | None = None, quiet: bool = False, explainer_options: dict | None = None) -> dict:
    """Audit MODEL on a folder of images; writes `audit.html` and `audit.json` into `out` and returns the report.

    `explainer_options` are further Explainer keywords (input_size, resize, order, layout, detector).

    Everything a user can get wrong (paths, methods, layer, boxes, thresholds) is checked before the first
    image, so such an error writes nothing; after that, an interrupt (Ctrl-C) still writes what is done,
    marked incomplete ("complete": false); "complete" is true only once every image and the sanity check are
    done. `limits` holds Explainer limits (max_pixels, max_forwards, max_output_side).
    """
    from . import methods as registry
    from .explainer import Explainer
    from .metrics import BASELINES, load_boxes
    from .progress import progress
    options = options or AuditOptions()
    check_out(out)
    paths = list_images(images, limit)
    for method in options.methods:
        registry.get(method)
    for kind in (options.deletion_baseline, options.insertion_baseline):
        if kind not in BASELINES:
            raise UserError(f"Unknown baseline '{kind}'; use one of {', '.join(BASELINES)}.")
    if options.steps < 1:
        raise UserError(f"--steps must be at least 1, not {options.steps}.")
    for gate in thresholds:
        need = METRICS[gate.metric][2]
        if (need == "boxes" and boxes is None) or (need == "compare" and compare is None) or \
                (need == "sanity" and not options.sanity):
            flag = {"boxes": "--boxes FILE", "compare": "--compare OTHER.onnx", "sanity": "--sanity"}[need]
            raise UserError(f"Threshold on '{gate.metric}' needs {flag}; add it or drop the threshold.")
        if gate.method and gate.method not in options.methods:
            raise UserError(f"Threshold names method '{gate.method}', which is not audited (--methods).")
    box_map = load_boxes(boxes) if boxes is not None else None
    explainer = Explainer(model, preprocess=preset, labels=labels, device=device, quiet=quiet,
                          **(explainer_options or {}))
    explainer.limits.check_forwards("deletion/insertion", 2 * (options.steps + 1))
    if any(registry.get(m).uses_layer for m in options.methods):
        explainer.model.resolve_layer(options.layer)
    torch_methods = [m for m in options.methods if registry.get(m).engine == "torch"]
    if torch_methods:
        explainer.module  # noqa: B018 - converts now: a model the converter cannot take fails before any work
    other = None
    if compare is not None:
        same = {k: v for k, v in (explainer_options or {}).items() if k != "input_size"}  # the size: the first's
        other = Explainer(compare, preprocess=explainer.preprocess, labels=explainer.labels, device=device,
                          quiet=quiet, input_size=explainer.model.probe_size, **same)
        _same_classes(explainer, other)
    with transaction(rollback_on=(UserError,)):  # a refusal mid-way (the plan's included) leaves nothing behind
        root = Path(images) if Path(images).is_dir() else Path(images).parent
        audit = Audit(explainer, other, options, box_map, root, Path(out), thresholds,
                      [str(model)] + ([str(compare)] if compare is not None else []))
        if other is not None and torch_methods and _converter_missing(other):
            audit.drift_skipped = {m: "the second model has ops the torch converter does not take (quantised models "
                                      "often do), so gradient methods cannot run on it" for m in torch_methods}
        audit.cost = _plan(audit, paths, quiet)
        try:
            for path in progress(paths, desc="audit", quiet=quiet, unit="image"):
                audit.add_image(path)  # appended to the log; audit.json and the HTML are built once, at the end
            if options.sanity:
                audit.add_sanity(paths)
            audit.finished = True
        except UserError:
            raise
        except BaseException:  # Ctrl-C, SIGTERM (or a bug): what is done is still written, marked incomplete
            audit.interrupted = True
            audit.write(html=True)
            raise
        return audit.write(html=True)


def _plan(audit: Audit, paths: Sequence[Path], quiet: bool) -> dict | None:
    """The audit's cost in forward passes per step (measured on the first readable image), printed first."""
    import sys
    from .audit_log import audit_cost, format_cost
    from .errors import ImageError
    for path in paths:
        try:
            first = audit.explainer.prepare([str(path)])
        except ImageError:
            continue
        cost = audit_cost(audit.explainer, audit.options, len(paths), audit.other, first, audit.layer_for,
                          list(audit.drift_skipped))
        if not quiet:
            print(format_cost(cost), file=sys.stderr)
        return cost
    return None


# ---- small helpers ------------------------------------------------------------------------------
def _same_classes(explainer: "Explainer", other: "Explainer") -> None:
    """Refuse a second model whose first output has another number of classes (drift compares class by class)."""
    a, b = (e.model.outputs[0].shape[-1] if e.model.outputs[0].shape else None for e in (explainer, other))
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise UserError(f"The model has {a} classes and the --compare model {b}; compare two versions of the "
                        "same classifier (same classes).")


def _converter_missing(explainer: "Explainer") -> bool:
    """True when the torch converter cannot take the explainer's model."""
    import onnxtorch
    return onnxtorch.problem(explainer.torch_proto) is not None


def _display_name(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def _mean(values: Sequence[float]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    if not curves:
        return []
    return [sum(c[i] for c in curves) / len(curves) for i in range(len(curves[0]))]
