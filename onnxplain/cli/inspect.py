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
@model_options(engine=True)
def inspect(model: str, images: tuple[str, ...], spatial: bool, as_json: bool, top: int,
            models: ModelOptions) -> None:
    """Describe MODEL: producer, opset, inputs, outputs, weights, layers, the auto layer; top-k for IMAGES."""
    explainer = models.explainer(model)
    report = describe(explainer, spatial)
    if images:
        report["predictions"] = [p.as_dict() for p in explainer.predict(list(images), top=top)]
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(format_report(report))


def describe(explainer, spatial_only: bool = False) -> dict:
    """Everything `inspect` shows, as a JSON-ready dict."""
    from ..model import _fmt_shape
    from ..targets import output_kind
    model = explainer.model
    try:
        auto, why = model.auto_layer()
    except Exception as exc:  # a model with no spatial tensor still inspects
        auto, why = None, str(exc)
    layers = model.spatial_layers if spatial_only else model.layers
    return {
        "schema_version": SCHEMA_VERSION,
        "path": str(model.path) if model.path else None,
        "producer": model.producer, "opset": model.opset, "ir_version": model.proto.ir_version,
        "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in model.inputs],
        "outputs": [{"name": o.name, "dtype": o.dtype, "shape": list(o.shape), "kind": output_kind(o.shape)}
                    for o in model.outputs],
        "input_layout": explainer.spec.layout,
        "weights": {"count": len(model.weights), "bytes": model.weight_bytes},
        "layers": [{"name": t.name, "op": t.op_type, "shape": _fmt_shape(t.shape), "layout": t.layout,
                    "scope": t.scope} for t in layers],
        "auto_layer": {"name": auto, "why": why},
        "converter": converter_status(model),
        "device": explainer.device,
        "engine": explainer.engine,
    }


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


def format_report(report: dict) -> str:
    """The report as the text table `inspect` prints."""
    lines = [f"model      {report['path']}", f"producer   {report['producer']}", f"opset      {report['opset']}",
             f"device     {report['device']} (engine {report.get('engine', 'ort')})"]
    for kind in ("inputs", "outputs"):
        for item in report[kind]:
            guess = f"  ({item['kind']})" if "kind" in item else ""
            lines.append(f"{kind[:-1]:<10} {item['name']}  {item['dtype']}  {_shape(item['shape'])}{guess}")
    w = report["weights"]
    lines.append(f"weights    {w['count']} tensors, {w['bytes'] / 1e6:.2f} MB")
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
        lines.append("")
        lines.append(f"top-{len(prediction['top'])} for {prediction['image']}:")
        for entry in prediction["top"]:
            lines.append(f"  {entry['index']:>5}  {entry['probability']:7.2%}  {entry['name']}")
    return "\n".join(lines)
