"""The `onnxplain` command line: every click command of onnxplain lives in this package.

Subcommands load on first use (a lazy group) and import only click at module level; onnx, onnxruntime,
numpy, torch and cv2 load inside the commands, so `onnxplain --help` is fast. A UserError prints its one
sentence and exits 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys

import click

from .common import HELP, Command, Group, LazyGroup, ModelOptions, model_options

COMMANDS = {
    "inspect": "onnxplain.cli.inspect:inspect",
    "explain": "onnxplain.cli.explain:explain",
    "methods": "onnxplain.cli.explain:methods_command",
    "features": "onnxplain.cli.features:features",
    "synth": "onnxplain.cli.synth:synth",
    "audit": "onnxplain.cli.audit:audit_command",
    "serve": "onnxplain.cli.serve:serve_command",
    "graft": "onnxplain.cli.graft:graft_command",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings=HELP)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.version_option(package_name="onnxplain")
def main(quiet: bool) -> None:
    """Explain image models stored as ONNX: heatmaps, features, synthesis, audits."""
    # --quiet stays this invocation's: the commands read it with common.quiet() and pass it down


__all__ = ["main", "Group", "Command", "LazyGroup", "ModelOptions", "model_options", "COMMANDS"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
