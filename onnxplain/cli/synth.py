"""`onnxplain synth ...`: images optimised through the model, from the command line.

Heavy imports (torch, the converter) stay inside the commands. A UserError prints its one
sentence and exits 2, whether this group runs under `onnxplain` or on its own.
"""
from __future__ import annotations

from pathlib import Path

import click

from ..params import number
from .common import HELP, OUT_DEFAULT, Group, model_options, param_option


synth = Group("synth", help="What a neuron wants to see: activation maximisation, class visualisation, "
                              "DeepDream, inversion, fooling images, texture and style.",
                context_settings=HELP)


def common_options(func):
    """--steps, --seed, -p KEY=VALUE, --out, and the model options shared by every synth command."""
    func = model_options()(func)
    func = click.option("--out", "out_dir", default=OUT_DEFAULT, show_default=True, type=click.Path())(func)
    func = param_option("jitter=8", help="Any other parameter KEY=VALUE (repeatable), e.g. -p jitter=8 "
                                         "-p blur_sigma=1.")(func)
    func = click.option("--seed", default=None, type=int, help="Random seed (default 0).")(func)
    func = click.option("--steps", default=None, type=int, help="Optimisation steps (default: the method's).")(func)
    return func


def image_layer_arguments(func):
    """MODEL IMAGE and --layer, in that order: what the commands working on one image's features take."""
    func = click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")(func)
    func = click.argument("image", type=click.Path())(func)
    return click.argument("model", type=click.Path())(func)


def _on_image(run, cls: type, explainer, image: str, layer: str, pairs, **given):
    """`run(explainer, image, layer, **params)` with the params built from -p pairs and the options given."""
    return run(explainer, image, layer, **_params(cls, pairs, explainer, **given))


def _params(cls: type, pairs, explainer=None, **given) -> dict:
    """Keyword overrides for a params dataclass from -p KEY=VALUE pairs (typed by the field's default)
    and the explicit options that were set; steps x octaves are bounded by the explainer's --max-forwards."""
    import dataclasses
    from ..params import coerce_fields, parse_pairs
    from ..synthesis import SynthesisError
    known = [f.name for f in dataclasses.fields(cls)]
    parsed = parse_pairs(pairs, "jitter=8", SynthesisError)
    unknown = [key for key in parsed if key not in known]
    if unknown:
        raise SynthesisError(f"Unknown parameter '{unknown[0]}' (known: {', '.join(known)}).")
    overrides = {k: v for k, v in given.items() if v is not None}
    merged = {**overrides, **coerce_fields(cls, parsed, error=SynthesisError)}
    if explainer is not None:
        defaults = cls()
        steps, octaves = (merged.get(k, getattr(defaults, k, 1)) for k in ("steps", "octaves"))
        if isinstance(steps, int) and isinstance(octaves, int):
            explainer.limits.check_forwards(f"synth {cls.__name__.removesuffix('Params').lower()}",
                                            steps * max(1, octaves))
    return merged


def _save(result, out_dir: str, stem: str) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = result.save(out / stem)
    history = result.history
    click.echo(f"{result.kind}: objective {history[0]:.4g} -> {history[-1]:.4g} -> {files['image']}, {files['json']}")
    return files


def _position(text: str | None):
    from ..synthesis import SynthesisError
    if text is None or text in ("centre", "center"):
        return text
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise SynthesisError(f"Position '{text}' is not ROW,COL or centre; write e.g. --position 3,4.") from None
    return row, col


def _channels(text: str | None) -> list[int] | None:
    """'0-15' or '0,3,7' (ranges inclusive) as a list of channels."""
    from ..synthesis import SynthesisError
    if not text:
        return None
    chosen: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            chosen.extend(range(int(low), int(high) + 1) if high else [int(low)])
    except ValueError:
        raise SynthesisError(f"Channels '{text}' are not a list like 0-15 or 0,3,7.") from None
    return chosen


@synth.command()
@click.argument("model", type=click.Path())
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--channel", "-c", type=int, default=None, help="Channel of LAYER to maximise (its mean).")
@click.option("--position", default=None, help="ROW,COL (or centre) in LAYER's grid: maximise one neuron.")
@click.option("--target", "-t", default=None, help="Class index or name: maximise its score before softmax.")
@click.option("--output", default=None, help="Model output for --target (default: the first).")
@click.option("--lr", default=None, type=number, help="Step size in unit space (default 0.02).")
@common_options
def maximize(model, layer, channel, position, target, output, lr, models, steps, seed, param,
             out_dir):
    """The image that maximises a channel (-l, -c), a neuron (+ --position) or a class score (-t) of MODEL.

    Gradient ascent from noise with Yosinski's regularisers; -p sets any MaximizeParams field
    (l2_decay, blur_every, blur_sigma, bilateral_every, jitter, norm_pct, contrib_pct, octaves, ...).
    """
    from ..synthesis.activation import MaximizeParams, maximize as run
    explainer = models.explainer(model)
    overrides = _params(MaximizeParams, param, explainer, steps=steps, seed=seed, lr=lr)
    result = run(explainer, layer=layer, channel=channel, position=_position(position), target=target,
                 output=output, **overrides)
    objective = result.details["objective"]
    tag = f"class{objective['channel']}" if objective["kind"] == "class" else f"c{objective['channel']}"
    _save(result, out_dir, f"maximize.{tag}")


@synth.command()
@click.argument("model", type=click.Path())
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--channels", "-c", default=None, help="Channels like 0-15 or 0,3,7 (default: the first 16).")
@click.option("--batch-size", default=16, show_default=True, help="Images optimised together.")
@click.option("--tile", default=64, show_default=True, help="Tile size in pixels.")
@click.option("--columns", default=None, type=int, help="Grid columns (default: square).")
@click.option("--lr", default=None, type=number, help="Step size in unit space (default 0.02).")
@common_options
def grid(model, layer, channels, batch_size, tile, columns, lr, models, steps, seed, param, out_dir):
    """Many channels of LAYER maximised in one batch (one image per channel), as a labelled grid PNG."""
    from ..synthesis.activation import MaximizeParams, maximize_grid
    explainer = models.explainer(model)
    overrides = _params(MaximizeParams, param, explainer, steps=steps, seed=seed, lr=lr)
    result = maximize_grid(explainer, layer, _channels(channels), batch_size=batch_size, tile=tile,
                           columns=columns, **overrides)
    _save(result, out_dir, "grid")


@synth.command("class-vis")
@click.argument("model", type=click.Path())
@click.option("--target", "-t", required=True, help="Class index or name.")
@click.option("--output", default=None, help="Model output (default: the first).")
@click.option("--lam", default=None, type=number, help="L2 penalty lambda (default 1e-4).")
@click.option("--lr", default=None, type=number, help="Step size in unit space (default 0.02).")
@common_options
def class_vis(model, target, output, lam, lr, models, steps, seed, param, out_dir):
    """Simonyan's class model of MODEL: arg max S_c(I) - lambda ||I||^2 for class TARGET."""
    from ..synthesis.activation import ClassVisParams, class_vis as run
    explainer = models.explainer(model)
    result = run(explainer, target, output, **_params(ClassVisParams, param, explainer, steps=steps, seed=seed, lam=lam, lr=lr))
    _save(result, out_dir, f"class-vis.{result.details['objective']['channel']}")


@synth.command()
@image_layer_arguments
@click.option("--octaves", default=None, type=int, help="Octaves (default 4).")
@click.option("--lr", default=None, type=number, help="Step size in unit space (default 0.012, ~1.5 pixels).")
@common_options
def dream(model, image, layer, octaves, lr, models, steps, seed, param, out_dir):
    """DeepDream: amplify what LAYER of MODEL sees in IMAGE (steps are per octave)."""
    from ..synthesis.deepdream import DreamParams, dream as run
    result = _on_image(run, DreamParams, models.explainer(model), image, layer, param, steps=steps, seed=seed,
                       octaves=octaves, lr=lr)
    _save(result, out_dir, f"dream.{Path(image).stem}")


@synth.command()
@image_layer_arguments
@click.option("--tv-weight", default=None, type=number, help="Total variation weight (default 0.5).")
@click.option("--lr", default=None, type=number, help="Adam learning rate (default 0.05).")
@common_options
def invert(model, image, layer, tv_weight, lr, models, steps, seed, param, out_dir):
    """Reconstruct IMAGE from its features at LAYER of MODEL (Mahendran & Vedaldi), from noise."""
    from ..synthesis.inversion import InvertParams, invert as run
    result = _on_image(run, InvertParams, models.explainer(model), image, layer, param, steps=steps, seed=seed,
                       tv_weight=tv_weight, lr=lr)
    files = _save(result, out_dir, f"invert.{Path(image).stem}")
    click.echo(f"feature distance {result.details['feature_distance_start']:.4g} -> "
               f"{result.details['feature_distance']:.4g} ({files['image']})")


@synth.command()
@click.argument("model", type=click.Path())
@click.argument("image", type=click.Path())
@click.option("--target", "-t", required=True, help="Class index or name the model should see.")
@click.option("--eps", default=None, type=number, help="L-infinity budget in pixels/255, e.g. 8/255 (default).")
@click.option("--alpha", default=None, type=number, help="Step in pixels/255 (default 1/255).")
@click.option("--margin", default=None, type=number, help="Logit margin over the runner-up to stop (default 0).")
@click.option("--output", default=None, help="Model output (default: the first).")
@common_options
def fool(model, image, target, eps, alpha, margin, output, models, steps, seed, param, out_dir):
    """Targeted PGD: nudge IMAGE (at model-input size) until MODEL calls it TARGET, within --eps."""
    from ..synthesis.adversarial import FoolParams, fool as run
    explainer = models.explainer(model)
    result = run(explainer, image, target, output, **_params(FoolParams, param, explainer, steps=steps, seed=seed, eps=eps,
                                                             alpha=alpha, margin=margin))
    files = _save(result, out_dir, f"fool.{Path(image).stem}.{result.target}")
    verdict = "fooled" if result.success else "NOT fooled"
    click.echo(f"{verdict}: top-1 {result.predicted} {explainer.label(result.predicted)!r}, target {result.target} "
               f"{result.label!r} at {result.confidence:.1%}, {result.steps} steps, L-inf {result.linf}/255 "
               f"({files['original']})")
    if not result.success:
        click.get_current_context().exit(1)


@synth.command()
@click.argument("model", type=click.Path())
@click.argument("image", type=click.Path())
@click.option("--layer", "-l", "layers", multiple=True, help="Tensor name (repeatable; default: one per resolution).")
@click.option("--weight", "-w", "weights", multiple=True, type=number, help="Weight per --layer (default equal).")
@click.option("--optimizer", default=None, type=click.Choice(["lbfgs", "adam"]), help="Default lbfgs.")
@click.option("--size", default=None, help="Texture size HxW (e.g. 512x768; default: the model's input size).")
@common_options
def texture(model, image, layers, weights, optimizer, size, models, steps, seed, param, out_dir):
    """A new image with the texture of IMAGE: Gram matrices at LAYERS of MODEL matched from noise (Gatys)."""
    from ..params import coerce
    from ..synthesis.style_transfer import StyleParams, texture as run
    explainer = models.explainer(model)
    hw = coerce("size", size, (0, 0), owner="texture") if size else None
    result = run(explainer, image, list(layers) or None, list(weights) or None, size=hw,
                 **_params(StyleParams, param, explainer, steps=steps, seed=seed, optimizer=optimizer))
    _save(result, out_dir, f"texture.{Path(image).stem}")


@synth.command()
@click.argument("model", type=click.Path())
@click.argument("content", type=click.Path())
@click.argument("style_image", metavar="STYLE", type=click.Path())
@click.option("--content-layer", default=None, help="Content tensor (default: conv4_2's analogue, the second "
                                                   "activation at the second-deepest resolution).")
@click.option("--style-layer", "style_layers", multiple=True, help="Style tensor (repeatable; default: the first "
                                                                   "activation per resolution, Gatys's conv_k_1).")
@click.option("--style-layer-weight", "style_weights", multiple=True, type=number, help="Weight per --style-layer.")
@click.option("--content-weight", default=1.0, show_default=True, type=number)
@click.option("--style-weight", default=1e3, show_default=True, type=number,
              help="Relative style loss weight (content weight 1: Gatys's 1e-3 ratio).")
@click.option("--optimizer", default=None, type=click.Choice(["lbfgs", "adam"]), help="Default lbfgs.")
@common_options
def style(model, content, style_image, content_layer, style_layers, style_weights, content_weight, style_weight,
          optimizer, models, steps, seed, param, out_dir):
    """CONTENT painted in the style of STYLE through MODEL's layers (Gatys et al.)."""
    from ..synthesis.style_transfer import StyleParams, style as run
    explainer = models.explainer(model)
    result = run(explainer, content, style_image, content_layer, list(style_layers) or None,
                 list(style_weights) or None, content_weight, style_weight,
                 **_params(StyleParams, param, explainer, steps=steps, seed=seed, optimizer=optimizer))
    _save(result, out_dir, f"style.{Path(content).stem}.{Path(style_image).stem}")


__all__ = ["synth"]
