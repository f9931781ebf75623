"""`onnxplain features ...`: what layers and filters see (and `features peaks`: where filters peak).

Heavy imports stay inside the commands. A UserError prints its one sentence and exits 2,
whether this group runs under `onnxplain` or on its own.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..writing import write_json
from .common import HELP, OUT_DEFAULT, Group, model_options, out_dir
from .jobs import job_options


features = Group("features", help="What layers and filters see: activations, dead filters, kernels, "
                                  "top-k patches, receptive fields, embeddings, neighbours, t-SNE maps.",
                 context_settings=HELP)


@features.command()
@click.argument("model", type=click.Path())
@click.argument("image", type=click.Path())
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--tile", default=64, show_default=True, help="Tile size in pixels.")
@click.option("--colormap", default="viridis", show_default=True)
@click.option("--shared-scale", is_flag=True, help="One colour scale for every tile (with a colour bar).")
@click.option("--out", "out_path", default=OUT_DEFAULT, show_default=True, type=click.Path())
@model_options(batch_size=32)
def activations(model, image, layer, tile, colormap, shared_scale, out_path, models):
    """Every channel of LAYER for IMAGE: a labelled grid PNG and per-channel stats (JSON)."""
    from ..features.activations import activations as run
    explainer = models.explainer(model)
    result = run(explainer, image, layer)
    files = result.save(out_dir(out_path) / f"{Path(image).stem}.activations", tile, colormap, shared_scale)
    click.echo(f"{len(result.stats)} channels of {result.layer} ({result.layout}) -> {files['grid']}, "
               f"{files['stats']}")


@features.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--layer", "-l", "layers", multiple=True, help="Tensor name (repeatable; default: every spatial layer).")
@click.option("--threshold", default=1e-6, show_default=True, help="Dead when the max activation is <= this.")
@click.option("--warn", "warn_fraction", default=0.1, show_default=True,
              help="Warn when a post-ReLU layer has more than this fraction dead.")
@click.option("--out", "out_path", default=OUT_DEFAULT, show_default=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@model_options(batch_size=32)
def dead(model, images, layers, threshold, warn_fraction, out_path, as_json, models):
    """Channels that never activate over IMAGES (files or folders), per spatial layer; writes dead.json."""
    from ..features.dead import dead_filters
    explainer = models.explainer(model)
    report = dead_filters(explainer, list(images), list(layers) or None, threshold, warn_fraction)
    path = out_dir(out_path) / "dead.json"
    write_json(path, report.as_dict())
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.text())
    if not as_json:
        click.echo(f"-> {path}")


@features.command()
@click.argument("model", type=click.Path())
@click.option("--layer", "-l", default=None, help="A Conv output (or the activation after it); default: first conv.")
@click.option("--max-filters", default=64, show_default=True)
@click.option("--max-inputs", default=16, show_default=True, help="Input channels shown per filter (deeper convs).")
@click.option("--tile", default=32, show_default=True, help="Tile size in pixels.")
@click.option("--out", "out_path", default=OUT_DEFAULT, show_default=True, type=click.Path())
@model_options(batch_size=32)
def filters(model, layer, max_filters, max_inputs, tile, out_path, models):
    """Conv kernels as a PNG grid: colour tiles for the first conv, gray per input channel deeper."""
    from .. import render
    from ..features.filters import filters as run
    explainer = models.explainer(model)
    grid = run(explainer, layer, max_filters, max_inputs)
    out = out_dir(out_path)
    png = render.write_png(out / "filters.png", grid.image(tile))
    write_json(out / "filters.json", grid.as_dict())
    kind = "colour" if grid.colour else "gray"
    click.echo(f"{len(grid.tiles)} {kind} tiles of {grid.weight} {list(grid.shape)} -> {png}")


@features.command("top-k")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--channel", "-c", required=True, type=int, help="Channel of the layer.")
@click.option("--k", "k", default=9, show_default=True)
@click.option("--by", default="max", type=click.Choice(["max", "mean"]), show_default=True)
@click.option("--keep-gates", is_flag=True, help="Let squeeze-excitation gates widen the field to the image.")
@click.option("--project", "project", multiple=True, type=click.Choice(["deconvnet", "guided"]),
              help="Also project each peak neuron to the pixels (Zeiler & Fergus); repeatable.")
@click.option("--out", "out_path", default=OUT_DEFAULT, show_default=True, type=click.Path())
@model_options(batch_size=32)
def top_k(model, images, layer, channel, k, by, keep_gates, project, out_path, models):
    """The K images of IMAGES that activate CHANNEL most, and the receptive-field patches at the peak."""
    from ..features.topk import top_k as run
    explainer = models.explainer(model)
    result = run(explainer, list(images), layer, channel, k, by, skip_gates=not keep_gates, project=project)
    files = result.save(out_dir(out_path) / f"topk.{channel}")
    for hit in result.hits:
        click.echo(f"{hit.score:10.4g}  {hit.image_name}  box {list(hit.original_box)}")
    click.echo(f"-> {', '.join(files.values())}")


@features.command()
@click.argument("model", type=click.Path())
@click.option("--layer", "-l", default=None, help="One tensor (default: every spatial layer).")
@click.option("--keep-gates", is_flag=True, help="Let squeeze-excitation gates widen fields to the image.")
@click.option("--json", "as_json", is_flag=True)
@model_options(batch_size=32)
def receptive(model, layer, keep_gates, as_json, models):
    """Receptive field (size, stride, start in input pixels) of LAYER or of every spatial layer."""
    from ..features.receptive import receptive_fields
    explainer = models.explainer(model)
    names = [explainer.model.resolve_layer(layer)] if layer else [t.name for t in explainer.model.spatial_layers]
    fields = receptive_fields(explainer.model, skip_gates=not keep_gates)
    entries = [fields[n].as_dict() for n in names if n in fields]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    width = max([len(e["layer"]) for e in entries] + [5])
    click.echo(f"{'layer':<{width}}  {'size':>13}  {'stride':>9}  {'start':>15}")
    for e in entries:
        size = "global" if e["global"] else "x".join(f"{s:g}" for s in e["size"])
        click.echo(f"{e['layer']:<{width}}  {size:>13}  {'x'.join(f'{s:g}' for s in e['stride']):>9}  "
                   f"{', '.join(f'{s:g}' for s in e['start']):>15}")


@features.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--output", default=None, help="Model output for the predicted class (default: the first).")
@click.option("--out", "out_path", default="onnxplain-out/embedding.npy", show_default=True, type=click.Path(),
              help="Vectors go to this .npy, the index of file names beside it as .json; the job's store "
                   "(results.parquet, parts, maps) into the folder of the same name without .npy.")
@model_options(batch_size=32)
@job_options(maps=False, overlays=False)
def embed(model, images, layer, output, out_path, models, jobs):
    """One vector per image of IMAGES (files, folders, manifests) at LAYER (spatial layers pooled), streaming
    as `explain` does: .npy plus a JSON index. Exit 1 when some image failed (one line each on stderr)."""
    from ..jobs import JobSpec
    from ..jobs.export import write_embedding
    from .jobs import finish, run_command_job
    spec = JobSpec(str(model), (), output=output, embed=layer, preset=models.preset, labels=models.labels,
                   device=models.device, engine=models.engine, batch_size=models.batch_size or 32,
                   options=models.explainer_options(), **jobs.spec_fields())
    store = Path(out_path).with_suffix("") if Path(out_path).suffix in (".npy", ".json") else Path(out_path)
    report = run_command_job(spec, images, store, jobs)
    files = write_embedding(store, out_path, spec)
    index = json.loads(Path(files["index"]).read_text())
    click.echo(f"{len(index['images'])} x {index['dims']} at {index['layer']} -> {files['vectors']}, "
               f"{files['index']}")
    finish(report, str(store))


@features.command()
@click.argument("model", type=click.Path())
@click.argument("embedding", type=click.Path())
@click.argument("queries", nargs=-1, required=True, type=click.Path())
@click.option("--k", "k", default=5, show_default=True)
@click.option("--metric", default="cosine", type=click.Choice(["cosine", "l2"]), show_default=True)
@click.option("--tile", default=96, show_default=True, help="Tile size in pixels.")
@click.option("--out", "out_path", default=OUT_DEFAULT, show_default=True, type=click.Path())
@model_options(batch_size=32)
def neighbours(model, embedding, queries, k, metric, tile, out_path, models):
    """The K nearest images in EMBEDDING (.npy from `embed`) for each of QUERIES, as a grid PNG."""
    from .. import render
    from ..features.embed import Embedding, neighbours as run, neighbours_grid
    explainer = models.explainer(model)
    results = run(Embedding.load(embedding), list(queries), k, metric, explainer)
    out = out_dir(out_path)
    png = render.write_png(out / "neighbours.png", neighbours_grid(results, tile))
    write_json(out / "neighbours.json", {"metric": metric, "queries": [r.as_dict() for r in results]})
    for result in results:
        click.echo(result.query)
        for name, distance in zip(result.names, result.distances):
            click.echo(f"  {distance:8.4f}  {name}")
    click.echo(f"-> {png}, {out / 'neighbours.json'}")


@features.command()
@click.argument("embedding", type=click.Path())
@click.option("--method", default="tsne", type=click.Choice(["tsne", "pca"]), show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--perplexity", default=30.0, show_default=True, help="t-SNE perplexity (capped at (N-1)/3).")
@click.option("--init", default="pca", type=click.Choice(["pca", "random"]), show_default=True,
              help="t-SNE start: the PCA layout, or a seeded random one.")
@click.option("--side", default=None, type=int, help="Cells per side of the image map (default: sqrt(N), <= 40).")
@click.option("--tile", default=64, show_default=True, help="Image-map tile size in pixels.")
@click.option("--out", "out_path", default=OUT_DEFAULT, show_default=True, type=click.Path())
def tsne(embedding, method, seed, perplexity, init, side, tile, out_path):
    """A 2-D map of EMBEDDING (.npy from `embed`): scatter by predicted class, and an image grid."""
    from .. import render
    from ..features.embed import Embedding, image_map, scatter_plot, tsne as run
    loaded = Embedding.load(embedding)
    coords = run(loaded, method, seed, perplexity, init)
    out = out_dir(out_path)
    scatter = render.write_png(out / f"{method}.png", scatter_plot(coords, loaded.predicted, loaded.labels))
    grid = render.write_png(out / f"{method}-grid.png", image_map(coords, loaded.names, side, tile))
    write_json(out / f"{method}.json", {
        "method": method, "seed": seed, "layer": loaded.layer,
        "points": [{"name": n, "x": float(x), "y": float(y), "predicted": p}
                   for n, (x, y), p in zip(loaded.names, coords, loaded.predicted)]})
    click.echo(f"{len(loaded)} points -> {scatter}, {grid}, {out / (method + '.json')}")


@features.command("peaks")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--threshold", default=0.1, show_default=True,
              help="A filter fires when its mean peak is at least this fraction of the layer's strongest.")
@click.option("--tile", default=48, show_default=True, help="Tile size in pixels.")
@click.option("--out", "out_path", default=OUT_DEFAULT, show_default=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@model_options(batch_size=32)
def peaks(model, images, layer, threshold, tile, out_path, as_json, models):
    """Where each filter of LAYER peaks over IMAGES (files or folders): a PNG of peak counts per filter,
    each filter's spread (mean distance of its peaks from their mean / map side) and the mean over firing filters."""
    from ..features.peaks import peaks as run
    result = run(models.explainer(model), list(images), layer, threshold)
    files = result.save(out_dir(out_path) / "peaks", tile)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(result.text())
    click.echo(f"-> {files['grid']}, {files['json']}")
