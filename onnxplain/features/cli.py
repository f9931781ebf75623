"""`onnxplain features ...`: what layers and filters see, from the command line.

Heavy imports stay inside the commands. A UserError prints its one sentence and exits 2,
whether this group runs under `onnxplain` or on its own.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..clikit import Group


features = Group("features", help="What layers and filters see: activations, dead filters, kernels, "
                                  "top-k patches, receptive fields, embeddings, neighbours, t-SNE maps.",
                 context_settings={"help_option_names": ["-h", "--help"]})


def model_options(func):
    """--preset, --labels, --device, --batch-size for commands that load a model."""
    func = click.option("--batch-size", default=32, show_default=True, help="Images per onnxruntime run.")(func)
    func = click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)(func)
    func = click.option("--labels", type=click.Path(), default=None, help="Class names, one per line.")(func)
    func = click.option("--preset", default=None,
                        help="Preprocessing preset (default: model metadata or imagenet).")(func)
    return func


def _explainer(model: str, preset: str | None, labels: str | None, device: str, batch_size: int):
    from .. import progress
    from ..explainer import Explainer
    return Explainer(model, preprocess=preset, labels=labels, device=device, batch_size=batch_size,
                     quiet=progress.QUIET)


def _out(out_dir: str) -> Path:
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


@features.command()
@click.argument("model", type=click.Path())
@click.argument("image", type=click.Path())
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--tile", default=64, show_default=True, help="Tile size in pixels.")
@click.option("--colormap", default="viridis", show_default=True)
@click.option("--out", "out_dir", default="onnxplain-out", show_default=True, type=click.Path())
@model_options
def activations(model, image, layer, tile, colormap, out_dir, preset, labels, device, batch_size):
    """Every channel of LAYER for IMAGE: a labelled grid PNG and per-channel stats (JSON)."""
    from .activations import activations as run
    explainer = _explainer(model, preset, labels, device, batch_size)
    result = run(explainer, image, layer)
    files = result.save(_out(out_dir) / f"{Path(image).stem}.activations", tile, colormap)
    click.echo(f"{len(result.stats)} channels of {result.layer} ({result.layout}) -> {files['grid']}, "
               f"{files['stats']}")


@features.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--layer", "-l", "layers", multiple=True, help="Tensor name (repeatable; default: every spatial layer).")
@click.option("--threshold", default=1e-6, show_default=True, help="Dead when the max activation is <= this.")
@click.option("--warn", "warn_fraction", default=0.1, show_default=True,
              help="Warn when a post-ReLU layer has more than this fraction dead.")
@click.option("--out", "out_dir", default="onnxplain-out", show_default=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@model_options
def dead(model, images, layers, threshold, warn_fraction, out_dir, as_json, preset, labels, device, batch_size):
    """Channels that never activate over IMAGES (files or folders), per spatial layer; writes dead.json."""
    from .dead import dead_filters
    explainer = _explainer(model, preset, labels, device, batch_size)
    report = dead_filters(explainer, list(images), list(layers) or None, threshold, warn_fraction)
    path = _out(out_dir) / "dead.json"
    path.write_text(json.dumps(report.as_dict(), indent=2))
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.text())
    if not as_json:
        click.echo(f"-> {path}")


@features.command()
@click.argument("model", type=click.Path())
@click.option("--layer", "-l", default=None, help="A Conv output (or the activation after it); default: first conv.")
@click.option("--max-filters", default=64, show_default=True)
@click.option("--max-inputs", default=16, show_default=True, help="Input channels shown per filter (deeper convs).")
@click.option("--tile", default=32, show_default=True, help="Tile size in pixels.")
@click.option("--out", "out_dir", default="onnxplain-out", show_default=True, type=click.Path())
@model_options
def filters(model, layer, max_filters, max_inputs, tile, out_dir, preset, labels, device, batch_size):
    """Conv kernels as a PNG grid: colour tiles for the first conv, gray per input channel deeper."""
    from .. import render
    from .filters import filters as run
    explainer = _explainer(model, preset, labels, device, batch_size)
    grid = run(explainer, layer, max_filters, max_inputs)
    out = _out(out_dir)
    png = render.write_png(out / "filters.png", grid.image(tile))
    (out / "filters.json").write_text(json.dumps(grid.as_dict(), indent=2))
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
@click.option("--out", "out_dir", default="onnxplain-out", show_default=True, type=click.Path())
@model_options
def top_k(model, images, layer, channel, k, by, keep_gates, out_dir, preset, labels, device, batch_size):
    """The K images of IMAGES that activate CHANNEL most, and the receptive-field patches at the peak."""
    from .topk import top_k as run
    explainer = _explainer(model, preset, labels, device, batch_size)
    result = run(explainer, list(images), layer, channel, k, by, skip_gates=not keep_gates)
    files = result.save(_out(out_dir) / f"topk.{channel}")
    for hit in result.hits:
        click.echo(f"{hit.score:10.4g}  {hit.image_name}  box {list(hit.original_box)}")
    click.echo(f"-> {files['images']}, {files['patches']}, {files['json']}")


@features.command()
@click.argument("model", type=click.Path())
@click.option("--layer", "-l", default=None, help="One tensor (default: every spatial layer).")
@click.option("--keep-gates", is_flag=True, help="Let squeeze-excitation gates widen fields to the image.")
@click.option("--json", "as_json", is_flag=True)
@model_options
def receptive(model, layer, keep_gates, as_json, preset, labels, device, batch_size):
    """Receptive field (size, stride, start in input pixels) of LAYER or of every spatial layer."""
    from .receptive import receptive_fields
    explainer = _explainer(model, preset, labels, device, batch_size)
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
              help="Vectors go to this .npy, the index of file names beside it as .json.")
@model_options
def embed(model, images, layer, output, out_path, preset, labels, device, batch_size):
    """One vector per image of IMAGES at LAYER (spatial layers pooled): .npy plus a JSON index."""
    from .embed import embed as run
    explainer = _explainer(model, preset, labels, device, batch_size)
    embedding = run(explainer, list(images), layer, output)
    files = embedding.save(out_path)
    click.echo(f"{len(embedding)} x {embedding.vectors.shape[1]} at {embedding.layer} -> {files['vectors']}, "
               f"{files['index']}")


@features.command()
@click.argument("model", type=click.Path())
@click.argument("embedding", type=click.Path())
@click.argument("queries", nargs=-1, required=True, type=click.Path())
@click.option("--k", "k", default=5, show_default=True)
@click.option("--metric", default="cosine", type=click.Choice(["cosine", "l2"]), show_default=True)
@click.option("--tile", default=96, show_default=True, help="Tile size in pixels.")
@click.option("--out", "out_dir", default="onnxplain-out", show_default=True, type=click.Path())
@model_options
def neighbours(model, embedding, queries, k, metric, tile, out_dir, preset, labels, device, batch_size):
    """The K nearest images in EMBEDDING (.npy from `embed`) for each of QUERIES, as a grid PNG."""
    from .. import render
    from .embed import Embedding, neighbours as run, neighbours_grid
    explainer = _explainer(model, preset, labels, device, batch_size)
    results = run(Embedding.load(embedding), list(queries), k, metric, explainer)
    out = _out(out_dir)
    png = render.write_png(out / "neighbours.png", neighbours_grid(results, tile))
    (out / "neighbours.json").write_text(json.dumps({"metric": metric, "queries": [r.as_dict() for r in results]},
                                                    indent=2))
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
@click.option("--out", "out_dir", default="onnxplain-out", show_default=True, type=click.Path())
def tsne(embedding, method, seed, perplexity, init, side, tile, out_dir):
    """A 2-D map of EMBEDDING (.npy from `embed`): scatter by predicted class, and an image grid."""
    from .. import render
    from .embed import Embedding, image_map, scatter_plot, tsne as run
    loaded = Embedding.load(embedding)
    coords = run(loaded, method, seed, perplexity, init)
    out = _out(out_dir)
    scatter = render.write_png(out / f"{method}.png", scatter_plot(coords, loaded.predicted, loaded.labels))
    grid = render.write_png(out / f"{method}-grid.png", image_map(coords, loaded.names, side, tile))
    (out / f"{method}.json").write_text(json.dumps(
        {"method": method, "seed": seed, "layer": loaded.layer,
         "points": [{"name": n, "x": float(x), "y": float(y), "predicted": p}
                    for n, (x, y), p in zip(loaded.names, coords, loaded.predicted)]}, indent=2))
    click.echo(f"{len(loaded)} points -> {scatter}, {grid}, {out / (method + '.json')}")


from ..interpretable import peaks_command  # noqa: E402  (click/numpy at module level; torch only inside)

features.add_command(peaks_command)
