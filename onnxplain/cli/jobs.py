"""The batch-job options of `explain` and `features embed`: inputs are image files, folders (recursive) and
manifests, run streaming on one machine by default or on Ray Data; the work is onnxplain.jobs.

Only click is imported at module level (see common.py); the jobs load inside the commands.
"""
from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import click

MAP_CHOICES = ("input", "raw", "original", "none")
SETTINGS_PROBE = 4  # the first images of a run: all failing with one message means the settings are wrong


@dataclass(frozen=True)
class JobOptions:
    """How a command's job runs: resume, shard, threads, Ray, flushes; what it stores: maps, overlays."""
    resume: bool = False
    shard: str | None = None
    threads: int | None = None
    ray: bool = False
    ray_address: str | None = None
    actors: int | None = None
    flush_every: int = 256
    maps: str | None = "input"
    overlays: bool | None = None  # None: on in-process, off on Ray
    retry_errors: bool = False    # with resume: run the error rows' images again (unreadable ones always are)

    def spec_fields(self) -> dict:
        """The JobSpec fields these options set (maps, overlays: off on Ray unless asked)."""
        return {"maps": self.maps, "overlays": not self.ray if self.overlays is None else self.overlays}


def job_options(maps: bool = True, overlays: bool = True) -> Callable:
    """Decorator: --resume, --shard, --threads, --flush-every, --ray, --ray-address, --actors (and --maps,
    --overlays/--no-overlays when asked), handed to the command as one `jobs: JobOptions` argument."""
    options = [
        click.option("--resume", is_flag=True,
                     help="Skip images already written to --out with the same settings (path, content, parameters)."),
        click.option("--retry-errors", is_flag=True,
                     help="With --resume, run the images of error rows again (default: only those whose file "
                          "changed or could not be read); each keeps one row."),
        click.option("--shard", default=None, metavar="I/N",
                     help="Only the images whose name hashes to I of N (0 <= I < N); the N shards' union is the whole."),
        click.option("--threads", type=int, default=None,
                     help="onnxruntime threads in this process (default: every core; on Ray: each actor's CPUs)."),
        click.option("--flush-every", default=256, show_default=True,
                     help="Images per written part: memory holds at most this many results."),
        click.option("--ray", is_flag=True, help='Run on Ray Data (pip install "onnxplain[ray]"); a local Ray '
                                                 "unless --ray-address."),
        click.option("--ray-address", default=None, metavar="ADDR",
                     help="Connect to this Ray cluster (implies --ray); its workers must see the images and --out."),
        click.option("--actors", type=int, default=None, help="Ray actors (default: one per GPU, else per 4 CPUs)."),
    ]
    if maps:
        options.append(click.option(
            "--maps", default="input", type=click.Choice(MAP_CHOICES), show_default=True,
            help="Resolution of the float16 maps in OUT/maps: the model's input, the method's own, the image's, "
                 "or none."))
    if overlays:
        options.append(click.option(
            "--overlays/--no-overlays", default=None,
            help="Per image and method under OUT/overlays: overlay PNG, heatmap and raw .npy (default: on; off on "
                 "Ray). --no-overlays keeps only the compact store, for large runs."))

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def command(*args, resume, retry_errors, shard, threads, flush_every, ray, ray_address, actors,
                    maps="none", overlays=False, **kwargs):
            jobs = JobOptions(resume, shard, threads, ray or ray_address is not None, ray_address, actors,
                              flush_every, None if maps == "none" else maps, overlays, retry_errors)
            return func(*args, jobs=jobs, **kwargs)
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def run_command_job(spec: Any, sources: Sequence[str], out: str | Path, jobs: JobOptions) -> dict:
    """Run `spec` over `sources` into `out` as the options say; returns the report (total, done, skipped,
    errors). Error rows print as one line each on stderr. A setting that fails the run's first images all
    the same way raises that one sentence, and what this run wrote into `out` is removed again."""
    from ..errors import UserError
    from ..jobs import check_shard, list_inputs
    from .common import cli_quiet
    from ..jobs.inputs import select
    shard = check_shard(jobs.shard)
    if jobs.actors is not None and not jobs.ray:
        raise UserError("--actors sets the number of Ray actors; add --ray (or drop --actors).")
    if jobs.retry_errors and not jobs.resume:
        raise UserError("--retry-errors runs a resumed job's error rows again; add --resume (or drop --retry-errors).")
    items = select(list_inputs(sources[0] if len(sources) == 1 else list(sources)), shard)
    out = Path(out)
    existed = out.exists()
    before = set(out.iterdir()) if out.is_dir() else set()
    try:
        if jobs.ray:
            return _on_ray(spec, items, out, jobs)
        from ..jobs import run_job
        resumed = jobs.resume and (out / "job.json").is_file()   # settings already ran there: no probe
        watch = ErrorRows(0 if resumed else min(len(items), SETTINGS_PROBE))
        report = run_job(spec, items, out, resume=jobs.resume, threads=jobs.threads, flush_every=jobs.flush_every,
                         quiet=cli_quiet(), on_batch=watch, retry_errors=jobs.retry_errors)
        return report.as_dict()
    except UserError:  # nothing this run wrote stays: a folder it made, or what it added to one that was there
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        elif out.is_dir():
            for entry in set(out.iterdir()) - before:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        raise


class ErrorRows:
    """Sees a job's rows batch by batch: prints each error row on stderr, one line; when the first `probe`
    rows all failed with one message, that is the settings' fault (a method, layer, target or model input
    the job cannot use), not the images': raised as that sentence before anything more runs."""

    def __init__(self, probe: int):
        self.probe, self.pending = probe, []

    def __call__(self, rows: list[dict]) -> None:
        from ..errors import UserError
        if self.probe:
            self.pending += rows
            if len(self.pending) < self.probe:
                return
            errors = {r["error"] for r in self.pending}
            if len(errors) == 1 and None not in errors:
                raise UserError(errors.pop())
            rows, self.pending, self.probe = self.pending, [], 0
        for row in rows:
            if row["error"] is not None:
                click.echo(error_line(row), err=True)


def error_line(row: dict) -> str:
    """`failed: SENTENCE` for an error row; the image's name goes before the sentence only where the sentence
    does not name the file already (decode errors do: `images.decode` quotes the path)."""
    named = bool(row.get("source")) and f"'{row['source']}'" in row["error"]
    return f"failed: {row['error']}" if named else f"failed: {row['path']}: {row['error']}"


def _on_ray(spec: Any, items: list, out: Path, jobs: JobOptions) -> dict:
    """The job on Ray Data, after the first images ran here (settings errors stop it before Ray starts)."""
    from ..jobs import run_ray
    from ..jobs.ray_runner import pending
    from ..jobs.work import Worker, build_explainer
    resumed = jobs.resume and any(out.glob("*.parquet"))
    todo = pending(items, out, spec.params_hash(), jobs.retry_errors)[0] if resumed else items
    if todo and not resumed:
        probe = todo[:SETTINGS_PROBE]
        ErrorRows(len(probe))(Worker(spec, build_explainer(spec, jobs.threads)).process(probe)[0])
    earlier = set(out.glob("*.parquet"))
    if todo:
        run_ray(spec, todo, out, address=jobs.ray_address, actors=jobs.actors, resume=jobs.resume,
                retry_errors=jobs.retry_errors)
    import pyarrow.parquet as pq
    fresh = [r for f in sorted(set(out.glob("*.parquet")) - earlier)   # this run's files, not the old row
             for r in pq.read_table(f, columns=["path", "source", "error"]).to_pylist()]  # of a replaced file
    ErrorRows(0)(fresh)
    from ..jobs.store import count_errors
    errors = sum(r["error"] is not None for r in fresh)
    return {"out": str(out), "total": len(items), "done": len(fresh), "skipped": len(items) - len(todo),
            "errors": errors, "kept": count_errors(out) - errors, "results": None}


def summary_line(report: dict, where: str) -> str:
    """One line: how many images were written, skipped and failed, how many earlier error rows the results
    still hold, and where the results are."""
    line = f"{report['total']} images: {report['done']} written, {report['skipped']} already done"
    if report["errors"]:
        line += f", {report['errors']} failed (their error rows are in the results; exit code 1)"
    kept = report.get("kept", 0)
    if kept:
        line += (f", {kept} earlier error{'s' if kept > 1 else ''} kept (rerun them with --retry-errors"
                 f"{'' if report['errors'] else '; exit code 1'})")
    return f"{line} -> {where}"


def finish(report: dict, where: str) -> None:
    """Print the summary line; exit 1 while the results hold error rows (this run's or kept from earlier)."""
    click.echo(summary_line(report, where))
    if report["errors"] or report.get("kept", 0):
        click.get_current_context().exit(1)

