"""`onnxplain explain` (heatmaps for images) and `onnxplain methods` (what methods there are)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .common import HELP, OUT_DEFAULT, Command, ModelOptions, model_options, param_option
from .jobs import JobOptions, job_options

@click.command(cls=Command, context_settings=HELP)
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--method", "-m", default="grad-cam", show_default=True, help="Method name(s), comma separated.")
@click.option("--target", "-t", default="predicted", show_default=True,
              help="predicted | INDEX | topK | all | class name | box:x1,y1,x2,y2[:class] | box:#K | "
                   "region:x1,y1,x2,y2[:channel] | char:K (boxes and regions in image pixels; a manifest's "
                   "`target` column overrides it per image).")
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--output", default=None, help="Model output to explain (default: chosen by kind, class scores "
                                              "first; see `onnxplain inspect`).")
@param_option("stride=8")
@click.option("--out", "out_dir", default=OUT_DEFAULT, show_default=True, type=click.Path())
@click.option("--alpha", default=0.5, show_default=True, help="Overlay opacity.")
@click.option("--colormap", default=None,
              help="jet, turbo, viridis, inferno, magma, hot, bwr or gray (default: jet; bwr at 0 for signed maps).")
@model_options(engine=True, batch_size=16)
@job_options()
def explain(model: str, images: tuple[str, ...], method: str, target: str, layer: str, output: str | None,
            param: tuple[str, ...], out_dir: str, alpha: float, colormap: str | None, models: ModelOptions,
            jobs: JobOptions) -> None:
    """Explain IMAGES (files, folders, or .csv/.jsonl/.parquet manifests with a `path` and an optional
    `target` column) with one or more methods, streaming into --out: results.parquet, float16 maps, overlays
    and, up to 1000 images, explain.json. A bad image is an error row (one line on stderr) and the run goes on.

    A map that is all zero, constant or non-finite is still written, with a warning on stderr and in
    explain.json. Exit codes: 0 every image explained, 1 some image failed, 2 a usage error.
    """
    from ..errors import MethodError, UserError
    from ..jobs import JobSpec
    from ..jobs.export import MANIFEST_LIMIT, explain_manifest, method_params
    from ..params import parse_pairs
    from ..render import check_colormap
    from ..writing import check_out, write_json
    from .jobs import finish, run_command_job
    from .inspect import prediction_lines
    params = parse_pairs(param, "stride=8", MethodError)
    names = tuple(dict.fromkeys(m.strip() for m in method.split(",") if m.strip()))
    if colormap is not None:
        check_colormap(colormap)
    spec = JobSpec(str(model), names, target, layer, output, {name: params for name in names} if params else {},
                   preset=models.preset, labels=models.labels, device=models.device, engine=models.engine,
                   batch_size=models.batch_size, alpha=alpha, colormap=colormap,
                   options=models.explainer_options(), **jobs.spec_fields())
    check_out(out_dir)  # an output path that cannot be written stops here, before any compute
    method_params(spec)  # unknown methods and bad -p values stop here, before any image
    report = run_command_job(spec, images, out_dir, jobs)
    out = Path(out_dir)
    manifest = explain_manifest(out, spec)
    if manifest is None:
        click.echo(f"explain.json is written for runs of up to {MANIFEST_LIMIT} images; read results.parquet "
                   "(onnxplain.jobs.read_results).")
    else:
        write_json(out / "explain.json", manifest)
        for prediction in manifest.get("predictions", []):
            for line in prediction_lines(prediction):
                click.echo(line)
        for entry in manifest["explanations"]:
            shown = out / entry["files"]["overlay"] if "overlay" in entry["files"] else entry["map_key"]
            label = entry.get("target", {}).get("label", "")
            click.echo(f"{entry['method']:<16} {entry['image']} [{label}] -> {shown}")
            for warning in entry.get("warnings", []):
                click.echo(f"warning: {entry['method']} on {entry['image']} [{label}]: {warning}", err=True)
        if not manifest["explanations"] and not manifest["errors"]:
            raise UserError("Nothing was explained; check the images and the target.")
    finish(report, str(out))


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
