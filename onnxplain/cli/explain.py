"""`onnxplain explain` (heatmaps for images) and `onnxplain methods` (what methods there are)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import click

from .common import HELP, OUT_DEFAULT, Command, ModelOptions, model_options, param_option

SCHEMA_VERSION = 1


@click.command(cls=Command, context_settings=HELP)
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--method", "-m", default="grad-cam", show_default=True, help="Method name(s), comma separated.")
@click.option("--target", "-t", default="predicted", show_default=True,
              help="predicted | INDEX | topK | class name | box:x1,y1,x2,y2[:class] | box:#K | "
                   "region:x1,y1,x2,y2[:channel] | char:K (boxes and regions in image pixels).")
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--output", default=None, help="Model output to explain (default: chosen by kind, class scores "
                                              "first; see `onnxplain inspect`).")
@param_option("stride=8")
@click.option("--out", "out_dir", default=OUT_DEFAULT, show_default=True, type=click.Path())
@click.option("--alpha", default=0.5, show_default=True, help="Overlay opacity.")
@click.option("--colormap", default="jet", show_default=True)
@model_options(engine=True)
def explain(model: str, images: tuple[str, ...], method: str, target: str, layer: str, output: str | None,
            param: tuple[str, ...], out_dir: str, alpha: float, colormap: str, models: ModelOptions) -> None:
    """Explain IMAGES with one or more methods: overlay PNG, raw .npy, and explain.json in --out.

    A map that is all zero, constant or non-finite is still written, with a warning on stderr and in
    explain.json."""
    from ..errors import MethodError, UserError
    from ..params import parse_pairs
    from .inspect import prediction_lines
    params = parse_pairs(param, "stride=8", MethodError)
    explainer = models.explainer(model)
    batch = explainer.prepare(list(images))
    results = {}
    for name in [m.strip() for m in method.split(",") if m.strip()]:
        results[name] = explainer.explain(batch, method=name, target=target, layer=layer, output=output, **params)
    out = Path(out_dir)
    predictions = [p.as_dict() for p in explainer.predict(batch, top=3, output=output)]
    manifest = {"schema_version": SCHEMA_VERSION, "model": str(model), "predictions": predictions,
                "explanations": []}
    for name, attributions in results.items():
        for attribution in attributions:
            stem = Path(attribution.image_name).stem or "image"
            files = attribution.save(str(out / f"{stem}.{name}.{file_tag(attribution.target)}"), alpha, colormap)
            manifest["explanations"].append({**attribution.summary(), "files": files})
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain.json").write_text(json.dumps(manifest, indent=2))
    for prediction in predictions:
        for line in prediction_lines(prediction):
            click.echo(line)
    for entry in manifest["explanations"]:
        click.echo(f"{entry['method']:<16} {entry['image']} [{entry['target']['label']}] -> "
                   f"{entry['files']['overlay']}")
        for warning in entry["warnings"]:
            click.echo(f"warning: {entry['method']} on {entry['image']} [{entry['target']['label']}]: {warning}",
                       err=True)
    if not manifest["explanations"]:
        raise UserError("Nothing was explained; check the images and the target.")


def file_tag(target: dict) -> str:
    """The part of the file names that names the target: a class index, or its label made file-safe."""
    if "index" in target and target.get("kind") == "ClassTarget":
        return str(target["index"])
    label = str(target.get("label", "target"))
    return re.sub(r"[^\w.-]+", "-", label, flags=re.ASCII).strip("-.") or "target"


@click.command("methods", cls=Command, context_settings=HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def methods_command(as_json: bool) -> None:
    """List every explanation method with its engine and parameters."""
    from ..methods import list_methods
    entries = list_methods()
    if as_json:
        click.echo(json.dumps(entries, indent=2, default=str))
        return
    for entry in entries:
        params = ", ".join(f"{k}={v!r}" for k, v in entry["params"].items())
        click.echo(f"{entry['name']:<22} {entry['engine']:<6} {entry['summary']}")
        if params:
            click.echo(f"{'':<29}{params}")
