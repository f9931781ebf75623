"""Pieces shared by every click command of onnxplain: user errors exit 2, the lazy group, the model options.

Only click and the standard library are imported here (and by every module of this package at import
time), so `onnxplain --help` loads neither onnx, onnxruntime, numpy, torch nor cv2.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

HELP = {"help_option_names": ["-h", "--help"]}
OUT_DEFAULT = "onnxplain-out"


class UserErrorsExit2:
    """Mixin for click commands and groups: a UserError prints `error: <sentence>` on stderr and exits 2.

    Every group uses it, so a subgroup behaves the same mounted under `onnxplain` or run on its own. The
    command runs in a writing transaction: when it fails or is interrupted (Ctrl-C, or SIGTERM, which is
    handled like Ctrl-C), the files it wrote are removed; interrupts exit 130.
    """

    def invoke(self, ctx):
        from ..errors import UserError
        from ..writing import transaction
        with _sigterm_as_interrupt():
            try:
                with transaction((Exception, KeyboardInterrupt), keep=(click.exceptions.Exit,)):
                    return super().invoke(ctx)
            except click.exceptions.Exit:
                raise
            except UserError as exc:
                click.echo(f"error: {exc}", err=True)
                ctx.exit(2)
            except KeyboardInterrupt:
                click.echo("interrupted: the files this run wrote were removed", err=True)
                ctx.exit(130)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread while the block runs (a timeout stops us cleanly)."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Group(UserErrorsExit2, click.Group):
    """A click group whose user errors exit 2 with one sentence."""


class Command(UserErrorsExit2, click.Command):
    """A click command whose user errors exit 2 with one sentence."""


class LazyGroup(Group):
    """A group whose subcommands are imported on first use from 'module:attribute' strings."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx) -> list[str]:
        """The lazy commands in the order given (a reading order), then any added directly."""
        return list(self.lazy) + [name for name in super().list_commands(ctx) if name not in self.lazy]

    def get_command(self, ctx, name: str):
        if name not in self.commands and name in self.lazy:
            module, attribute = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


# ---- the model options ------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelOptions:
    """What every command that loads a model takes: preprocessing, labels, device, engine, batch size, limits,
    and what the model's metadata may lack (input size, resize, colour order, layout, detector box layout)."""
    preset: str | None = None
    labels: str | None = None
    device: str = "auto"
    engine: str = "auto"
    batch_size: int | None = None
    input_size: str | None = None
    resize: str | None = None
    order: str | None = None
    layout: str | None = None
    detector: str | None = None
    limits: dict | None = None  # max_pixels, max_forwards, max_output_side (onnxplain.limits)

    def task_options(self) -> dict:
        """The Explainer keywords for what the metadata lacks (only those given)."""
        given = {"input_size": self.input_size, "resize": self.resize, "order": self.order, "layout": self.layout,
                 "detector": self.detector}
        return {k: v for k, v in given.items() if v is not None}

    def explainer_options(self) -> dict:
        """The Explainer keyword arguments beyond preset, labels, device, engine and batch size."""
        return {**self.task_options(), **(self.limits or {})}

    def explainer(self, model: str, quiet: bool | None = None) -> Any:
        """The Explainer these options describe (progress bars follow `onnxplain --quiet` unless told)."""
        from ..explainer import Explainer
        extra = {} if self.batch_size is None else {"batch_size": self.batch_size}
        return Explainer(model, preprocess=self.preset, labels=self.labels, device=self.device, engine=self.engine,
                         quiet=cli_quiet() if quiet is None else quiet, **extra, **self.explainer_options())


def cli_quiet() -> bool:
    """Whether this invocation of `onnxplain` was given --quiet (read from the root command's context)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("quiet"))


def model_options(engine: bool = False, batch_size: int | None = None) -> Callable:
    """Decorator: --preset, --labels, --device, the task options (--input-size, --resize, --order, --layout,
    --detector) and --engine, --batch-size when asked, handed to the command as one `models: ModelOptions`."""
    options = [
        click.option("--preset", default=None, help="Preprocessing preset (default: model metadata or imagenet)."),
        click.option("--labels", type=click.Path(), default=None, help="Class names, one per line (or a JSON list)."),
        click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True),
        click.option("--max-pixels", default=50_000_000, show_default=True, type=click.IntRange(1, None),
                     help="Largest image (width x height), checked from its header before decoding."),
        click.option("--max-forwards", default=100_000, show_default=True, type=click.IntRange(1, None),
                     help="Most forward passes one explanation of one image may cost (n, steps, windows, ...)."),
        click.option("--max-output-side", default=4096, show_default=True, type=click.IntRange(16, None),
                     help="Longest side of heatmaps and overlays; larger images are scaled down for them."),
        click.option("--input-size", default=None, metavar="HxW",
                     help="Model input size where the model's dims are symbolic, e.g. 640x640 or 48x320 "
                          "(default: the input shape, metadata, or a guess `inspect` names)."),
        click.option("--resize", default=None, type=click.Choice(["stretch", "crop", "letterbox"],
                                                                   case_sensitive=False),
                     help="How images reach the input size (default: metadata or the preset's own)."),
        click.option("--order", default=None, type=click.Choice(["rgb", "bgr"], case_sensitive=False),
                     help="Colour order the model expects (default: metadata or the preset's own)."),
        click.option("--layout", default=None, type=click.Choice(["nchw", "nhwc"], case_sensitive=False),
                     help="Input layout (default: read from the input's channel dim)."),
        click.option("--detector", default=None, type=click.Choice(["yolov8", "yolov5", "ssd"], case_sensitive=False),
                     help="Box layout of a detector's raw output (default: metadata or the output's shape)."),
    ]
    if engine:
        options.append(click.option(
            "--engine", default="auto", type=click.Choice(["auto", "ort", "torch"]), show_default=True,
            help="What runs forward-only methods: onnxruntime, or the torch converter (same results); "
                 "auto is ort, or torch with --device cuda when only torch can use CUDA."))
    if batch_size is not None:
        options.append(click.option("--batch-size", default=batch_size, show_default=True,
                                    help="Images per onnxruntime run."))

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def command(*args, preset, labels, device, input_size, resize, order, layout, detector, max_pixels,
                    max_forwards, max_output_side, engine="auto", batch_size=None, **kwargs):
            limits = {"max_pixels": max_pixels, "max_forwards": max_forwards, "max_output_side": max_output_side}
            models = ModelOptions(preset, labels, device, engine, batch_size, input_size, resize, order, layout,
                                  detector, limits)
            return func(*args, models=models, **kwargs)
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def param_option(example: str = "stride=8", metavar: str = "KEY=VALUE", help: str | None = None) -> Callable:
    """-p/--param KEY=VALUE (repeatable), parsed by onnxplain.params."""
    return click.option("--param", "-p", "param", multiple=True, metavar=metavar,
                        help=help or f"Parameter {metavar} (repeatable), e.g. -p {example}; tuples take one "
                                     "value for all or AxB, lists a,b,c, booleans true/false.")


def out_dir(path: str) -> Path:
    """The output folder, checked (not a file, writable) and created; a failed command removes it again."""
    from ..writing import check_out, make_dirs
    return make_dirs(check_out(path))
