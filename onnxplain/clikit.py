"""Pieces shared by every click command of onnxplain: user errors become one line and exit code 2.

Only click is imported here, so command groups stay fast to load.
"""
from __future__ import annotations

import click


class UserErrorsExit2:
    """Mixin for click commands and groups: a UserError prints `error: <sentence>` on stderr and exits 2.

    Every group uses it, so a subgroup behaves the same mounted under `onnxplain` or run on its own.
    """

    def invoke(self, ctx):
        from .errors import UserError
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


class Group(UserErrorsExit2, click.Group):
    """A click group whose user errors exit 2 with one sentence."""


class Command(UserErrorsExit2, click.Command):
    """A click command whose user errors exit 2 with one sentence."""
