"""`onnxplain graft`: write a model whose outputs include the maps of one method, computed inside the graph."""
from __future__ import annotations

import click

from .common import HELP, Command

METHODS = ("cam", "recipro-cam", "eigen-cam", "activations")  # onnxplain.graft.METHODS (not imported: lazy help)


@click.command("graft", cls=Command, context_settings=HELP)
@click.argument("model", type=click.Path())
@click.option("--method", "-m", required=True, type=click.Choice(METHODS), help="The maps to add.")
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--out", "out_path", required=True, type=click.Path(), help="Where to write the new model.")
def graft_command(model: str, method: str, layer: str, out_path: str) -> None:
    """Write MODEL with the METHOD's maps as extra outputs (xai_*), so any ONNX runtime returns them."""
    from ..graft import graft, save
    from ..model import Model

    grafted = graft(Model.load(model), method, layer)
    path = save(grafted, out_path)
    new = [o.name for o in grafted.graph.output if o.name.startswith("xai_")]
    click.echo(f"{path}: outputs {', '.join(o.name for o in grafted.graph.output)} (new: {', '.join(new)})")
