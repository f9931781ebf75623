"""`onnxplain inspect`: what a model is (inputs, outputs, layers, the auto layer, the converter's verdict)."""
from __future__ import annotations

import json

import click

from .common import HELP, Command, ModelOptions, model_options

SCHEMA_VERSION = 1


@click.command(cls=Command, context_settings=HELP)
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--spatial", is_flag=True, help="List only spatial layers (maps and token grids).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--top", default=5, show_default=True, help="Classes to show per image.")
@click.option("--output", default=None, help="Model output for the predictions and the auto layer "
                                              "(default: chosen by kind, class scores first).")
@model_options(engine=True)
def inspect(model: str, images: tuple[str, ...], spatial: bool, as_json: bool, top: int, output: str | None,
            models: ModelOptions) -> None:
    """Describe MODEL: producer, opset, inputs, outputs (kind, targets and methods that fit), what was read
    from the model and what was guessed, weights, layers, the auto layer; predictions (or text) for IMAGES."""
    explainer = models.explainer(model)
    batch = explainer.prepare(list(images)) if images else None
    output = explainer.output_name(output)
    report = describe(explainer, spatial, batch, output)
    if batch is not None:
        report["predictions"] = [p.as_dict() for p in explainer.predict(batch, top=top, output=output)]
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(format_report(report))


def describe(explainer, spatial_only: bool = False, batch=None, output: str | None = None) -> dict:
    """Everything `inspect` shows, as a JSON-ready dict."""
    from ..model import _fmt_shape
    from ..taskreport import inspect_task
    model = explainer.model
    task = inspect_task(model, explainer.task)
    kinds = {o["name"]: o for o in task["outputs"]}
    layers = model.spatial_layers if spatial_only else model.layers
    pre = explainer.preprocess
    return {
        "schema_version": SCHEMA_VERSION,
        "path": str(model.path) if model.path else None,
        "producer": model.producer, "opset": model.opset, "ir_version": model.proto.ir_version,
        "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in model.inputs],
        "outputs": [{"name": o.name, "dtype": o.dtype, "shape": list(o.shape), **_kind(kinds.get(o.name))}
                    for o in model.outputs],
        "explained_output": output,
        "input_layout": explainer.spec.layout,
        "preprocess": {"mean": list(pre.mean), "std": list(pre.std), "scale": pre.scale, "order": pre.order,
                       "resize": pre.resize, "size": list(explainer.spec.size or pre.size or model.probe_size
                                                         or (224, 224))},
        "task": task,
        "weights": {"count": len(model.weights), "bytes": model.weight_bytes, "note": model.weight_note},
        "layers": [{"name": t.name, "op": t.op_type, "shape": _fmt_shape(t.shape), "layout": t.layout,
                    "scope": t.scope} for t in layers],
        "auto_layer": auto_layer(explainer, batch, output),
        "converter": converter_status(model),
        "device": explainer.device,
        "engine": explainer.engine,
    }


def _kind(entry: dict | None) -> dict:
    """An output's kind, targets and methods from the task report (an unknown kind when it has none)."""
    if entry is None:
        return {"kind": "unknown", "normalised": False, "why": "", "targets": [], "methods": []}
    return {k: entry[k] for k in ("kind", "normalised", "why", "targets", "methods")}


def auto_layer(explainer, batch, output: str) -> dict:
    """The layer `explain --layer auto` uses (the probe on the first image, or a noise image), and why; where the
    probe cannot run (no target fits, no spatial tensor), the graph's choice or the reason there is none."""
    try:
        name, why = explainer.auto_layer(batch, output)
        return {"name": name, "why": why, "probed": True}
    except Exception as exc:  # noqa: BLE001 - inspect reports, it does not stop
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        name, why = explainer.model.auto_layer(output)
        return {"name": name, "why": f"{why} (not probed: {reason})", "probed": False}
    except Exception as exc:  # noqa: BLE001 - a model with no spatial tensor still inspects
        return {"name": None, "why": str(exc).splitlines()[0] if str(exc) else reason, "probed": False}


def converter_status(model) -> dict:
    """Whether the torch converter takes this model (gradient methods need it)."""
    try:
        import onnxtorch
        proto = onnxtorch.upcast_half(model.proto)
        missing, why = onnxtorch.check(proto), onnxtorch.problem(proto)
    except ImportError as exc:
        return {"ok": False, "missing": [], "message": str(exc)}
    return {"ok": why is None, "missing": [{"op": op, "opset": opset, "node": node} for op, opset, node in missing],
            "message": why, "float32": proto is not model.proto}


def _shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]" if shape is not None else "?"


FACTS = ("input_size", "layout", "preset", "resize", "order", "labels", "dictionary", "detector")


def _fact(name: str, fact: dict) -> str:
    value = fact["value"]
    shown = "x".join(map(str, value)) if name == "input_size" and isinstance(value, list) else \
        f"{len(value)} entries" if isinstance(value, list) else value
    how = f"read: {fact['source']}" if fact["read"] else fact["source"]
    return f"{name.replace('_', ' '):<10} {'-' if shown is None else shown}  [{how}]"


def format_report(report: dict) -> str:
    """The report as the text table `inspect` prints."""
    task = report["task"]
    lines = [f"model      {report['path']}", f"producer   {report['producer']}  (exporter {task.get('exporter')}, by its "
             f"{task.get('exporter_source')})",
             f"opset      {report['opset']}", f"device     {report['device']} (engine {report.get('engine', 'ort')})"]
    for item in report["inputs"]:
        lines.append(f"input      {item['name']}  {item['dtype']}  {_shape(item['shape'])}")
    for item in report["outputs"]:
        chosen = "  <- explained" if item["name"] == report.get("explained_output") else ""
        normalised = ", normalised" if item.get("normalised") else ""
        lines.append(f"output     {item['name']}  {item['dtype']}  {_shape(item['shape'])}  "
                     f"({item['kind']}{normalised}){chosen}")
        if item.get("why"):
            lines.append(f"             why: {item['why']}")
        lines.append(f"             targets: {', '.join(item['targets']) or 'none'}")
        lines.append(f"             methods: {', '.join(item['methods']) or 'none'}")
    for name in FACTS:
        if name in task:
            lines.append(_fact(name, task[name]))
    pre = report["preprocess"]
    lines.append(f"pixels     x = (pixel * {pre['scale']:.6g} - mean {_floats(pre['mean'])}) / std "
                 f"{_floats(pre['std'])}, {pre['order']}, {pre['resize']} to {'x'.join(map(str, pre['size']))}")
    for problem in task.get("problems", []):
        lines.append(f"problem    {problem}")
    w = report["weights"]
    lines.append(f"weights    {w['count']} tensors, {w['bytes'] / 1e6:.2f} MB")
    if w.get("note"):
        lines.append(f"           {w['note']}")
    conv = report["converter"]
    upcast = " as float32 (the model holds float16)" if conv.get("float32") else ""
    lines.append("converter  " + (f"converts to torch{upcast} (gradient methods available)" if conv["ok"] else
                                  "cannot convert: " + (", ".join(f"{m['op']} (node {m['node']})"
                                                                  for m in conv["missing"]) or conv["message"])))
    lines.append(f"auto layer {report['auto_layer']['name']}  ({report['auto_layer']['why']})")
    lines.append("")
    width = max([len(t["name"]) for t in report["layers"]] + [6])
    lines.append(f"{'tensor':<{width}}  {'op':<20} {'shape':<22} scope")
    for t in report["layers"]:
        lines.append(f"{t['name']:<{width}}  {t['op']:<20} {t['shape']:<22} {t['scope']}")
    for prediction in report.get("predictions", []):
        lines.extend([""] + prediction_lines(prediction))
    return "\n".join(lines)


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def prediction_lines(prediction: dict) -> list[str]:
    """One image's prediction as text: the decoded text of a recogniser, then its top entries with the
    probabilities as the model gives them (no second softmax on a normalised output)."""
    lines = []
    if "text" in prediction:
        lines.append(f"text for {prediction['image']}: {prediction['text']!r}")
    output = f" (output {prediction['output']})" if prediction.get("output") else ""
    lines.append(f"top-{len(prediction['top'])} for {prediction['image']}{output}:")
    for entry in prediction["top"]:
        lines.append(f"  {entry['index']:>5}  {entry['probability']:7.2%}  {entry['name']}")
    return lines
