"""The `onnxplain` command line. Heavy imports stay inside commands so `--help` is fast.

A UserError prints its one sentence and exits 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .clikit import Group

SCHEMA_VERSION = 1


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.version_option(package_name="onnxplain")
def main(quiet: bool) -> None:
    """Explain image models stored as ONNX: heatmaps, features, synthesis, audits."""
    if quiet:
        from . import progress
        progress.QUIET = True


def model_options(func):
    """Options shared by every command that loads a model for images."""
    func = click.option("--preset", default=None, help="Preprocessing preset (default: model metadata or imagenet).")(func)
    func = click.option("--labels", type=click.Path(), default=None, help="Class names, one per line.")(func)
    func = click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)(func)
    return func


def engine_option(func):
    """--engine for commands that run forward-only methods (not part of model_options: other command
    groups share that decorator and would need the argument too)."""
    return click.option("--engine", default="auto", type=click.Choice(["auto", "ort", "torch"]), show_default=True,
                        help="What runs forward-only methods: onnxruntime, or the torch converter (same results); "
                             "auto is ort, or torch with --device cuda when only torch can use CUDA.")(func)


def _explainer(model: str, preset: str | None, labels: str | None, device: str, engine: str = "auto"):
    from .explainer import Explainer
    from . import progress
    return Explainer(model, preprocess=preset, labels=labels, device=device, quiet=progress.QUIET, engine=engine)


def _shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]" if shape is not None else "?"


@main.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--spatial", is_flag=True, help="List only spatial layers (maps and token grids).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--top", default=5, show_default=True, help="Classes to show per image.")
@model_options
@engine_option
def inspect(model, images, spatial, as_json, top, preset, labels, device, engine):
    """Describe MODEL: producer, opset, inputs, outputs, weights, layers, the auto layer; top-k for IMAGES."""
    explainer = _explainer(model, preset, labels, device, engine)
    report = describe(explainer, spatial)
    if images:
        report["predictions"] = [p.as_dict() for p in explainer.predict(list(images), top=top)]
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(format_report(report))


def describe(explainer, spatial_only: bool = False) -> dict:
    """Everything `inspect` shows, as a JSON-ready dict."""
    from .model import _fmt_shape
    from .targets import output_kind
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


def format_report(report: dict) -> str:
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


@main.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--method", "-m", default="grad-cam", show_default=True, help="Method name(s), comma separated.")
@click.option("--target", "-t", default="predicted", show_default=True,
              help="predicted | INDEX | topK | class name | box:x1,y1,x2,y2[:class] | region:x1,y1,x2,y2[:channel].")
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--output", default=None, help="Model output to explain (default: the first).")
@click.option("--param", "-p", multiple=True, help="Method parameter KEY=VALUE (repeatable).")
@click.option("--out", "out_dir", default="onnxplain-out", show_default=True, type=click.Path())
@click.option("--alpha", default=0.5, show_default=True, help="Overlay opacity.")
@click.option("--colormap", default="jet", show_default=True)
@model_options
@engine_option
def explain(model, images, method, target, layer, output, param, out_dir, alpha, colormap, preset, labels, device,
            engine):
    """Explain IMAGES with one or more methods: overlay PNG, raw .npy, and explain.json in --out."""
    from .errors import UserError
    explainer = _explainer(model, preset, labels, device, engine)
    params = _parse_params(param)
    batch = explainer.prepare(list(images))
    results = {}
    for name in [m.strip() for m in method.split(",") if m.strip()]:
        results[name] = explainer.explain(batch, method=name, target=target, layer=layer, output=output, **params)
    out = Path(out_dir)
    manifest = {"schema_version": SCHEMA_VERSION, "model": str(model),
                "predictions": [p.as_dict() for p in explainer.predict(batch)], "explanations": []}
    for name, attributions in results.items():
        for attribution in attributions:
            stem = Path(attribution.image_name).stem or "image"
            tag = attribution.target.get("index", attribution.target.get("label", "target"))
            files = attribution.save(str(out / f"{stem}.{name}.{tag}"), alpha, colormap)
            manifest["explanations"].append({**attribution.summary(), "files": files})
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain.json").write_text(json.dumps(manifest, indent=2))
    for entry in manifest["explanations"]:
        click.echo(f"{entry['method']:<16} {entry['image']} -> {entry['files']['overlay']}")
    if not manifest["explanations"]:
        raise UserError("Nothing was explained; check the images and the target.")


def _parse_params(pairs) -> dict:
    from .errors import MethodError
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise MethodError(f"Parameter '{pair}' is not KEY=VALUE; write e.g. -p stride=8.")
        key, value = pair.split("=", 1)
        params[key.strip().replace("-", "_")] = value.strip()
    return params


@main.command("methods")
@click.option("--json", "as_json", is_flag=True)
def methods_command(as_json):
    """List every explanation method with its engine and parameters."""
    from .methods import list_methods
    entries = list_methods()
    if as_json:
        click.echo(json.dumps(entries, indent=2, default=str))
        return
    for entry in entries:
        params = ", ".join(f"{k}={v!r}" for k, v in entry["params"].items())
        click.echo(f"{entry['name']:<22} {entry['engine']:<6} {entry['summary']}")
        if params:
            click.echo(f"{'':<29}{params}")


from .audit import audit_command  # noqa: E402  (each module imports only click at module level)
from .features.cli import features  # noqa: E402
from .serve_cli import serve_command  # noqa: E402
from .synthesis.cli import synth  # noqa: E402

main.add_command(features)
main.add_command(synth)
main.add_command(audit_command)
main.add_command(serve_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
