"""Where a job's results go, written as work proceeds and safe to kill at any moment:

    OUT/job.json                 the JobSpec and its parameter hash
    OUT/parts/part-00000.parquet result rows of one flush (renamed into place last)
    OUT/maps/maps-00000.npz      the float16 maps of the same flush, keys `relpath::method::target`
    OUT/overlays/...             overlay PNGs (optional)
    OUT/results.parquet          every part in one file, written when the job completes

A part's maps are written before the part itself, so a part present means its maps are too; maps shards
without their part (a kill between the two) and temporary files are removed when a job resumes.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import UserError
from .inputs import Item, content_hash, read_bytes

PREDICTION = [("index", "int64"), ("name", "string"), ("score", "float64"), ("probability", "float64")]
EXPLANATION = [("method", "string"), ("target", "string"), ("target_index", "int64"), ("layer", "string"),
               ("peak_x", "int64"), ("peak_y", "int64"), ("peak", "float64"), ("mass", "float64"),
               ("warning", "string"), ("map_key", "string"), ("overlay", "string")]
COLUMNS = [("path", "string"), ("source", "string"), ("hash", "string"), ("params_hash", "string"),
           ("target", "string"), ("width", "int64"), ("height", "int64"), ("predictions", PREDICTION),
           ("text", "string"), ("explanations", EXPLANATION), ("error", "string"), ("seconds", "float64")]


def schema(with_maps: bool = False):
    """The pyarrow schema of result rows (with a `maps` column of npz bytes where Ray writes them inline)."""
    import pyarrow as pa

    def kind(spec):
        if isinstance(spec, list):
            return pa.list_(pa.struct([(n, kind(t)) for n, t in spec]))
        return pa.type_for_alias(spec)
    fields = [(name, kind(spec)) for name, spec in COLUMNS]
    return pa.schema(fields + ([("maps", pa.binary())] if with_maps else []))


def table(rows: list[dict], maps: list[bytes] | None = None):
    """Rows as a pyarrow Table of `schema()`; `maps` adds the inline maps column."""
    import pyarrow as pa
    columns = {name: [row[name] for row in rows] for name, _ in COLUMNS}
    if maps is not None:
        columns["maps"] = maps
    return pa.Table.from_pydict(columns, schema=schema(maps is not None))


def pack_maps(maps: dict[str, np.ndarray]) -> bytes:
    """Maps as the bytes of one compressed npz (what a shard file or an inline `maps` cell holds)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **maps)
    return buffer.getvalue()


class Store:
    """The output folder of one in-process job: appends parts, knows what is done, consolidates at the end."""

    def __init__(self, out: str | os.PathLike, spec_dict: dict, params_hash: str, resume: bool):
        self.out = Path(out)
        self.parts, self.maps = self.out / "parts", self.out / "maps"
        self.params_hash = params_hash
        if resume and (self.out / "job.json").is_file():
            check_settings(self.out, params_hash)
            self._clean()
        else:
            for path in (self.parts, self.maps, self.out / "overlays"):
                shutil.rmtree(path, ignore_errors=True)
            (self.out / "results.parquet").unlink(missing_ok=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        self.maps.mkdir(parents=True, exist_ok=True)
        write_settings(self.out, spec_dict, params_hash)
        self.next_index = 1 + max([_index(p) for p in self.parts.glob("part-*.parquet")], default=-1)

    def _clean(self) -> None:
        """Remove temporary files and maps shards whose part was never written."""
        for temp in list(self.out.rglob("*.tmp")):
            temp.unlink()
        parts = {_index(p) for p in self.parts.glob("part-*.parquet")}
        for shard in self.maps.glob("maps-*.npz"):
            if _index(shard) not in parts:
                shard.unlink()
        (self.out / "results.parquet").unlink(missing_ok=True)

    def done(self) -> dict[str, dict[str, bool]]:
        """What every relative path has written with these parameters (see finished and resume_state)."""
        return finished(sorted(self.parts.glob("part-*.parquet")), self.params_hash)

    def append(self, rows: list[dict], maps: dict[str, np.ndarray]) -> None:
        """Write one flush: its maps shard, then its part (the part's rename is the commit)."""
        import pyarrow.parquet as pq
        name = f"{self.next_index:05d}"
        if maps:
            _write_atomic(self.maps / f"maps-{name}.npz", pack_maps(maps))
        buffer = io.BytesIO()
        pq.write_table(table(rows), buffer)
        _write_atomic(self.parts / f"part-{name}.parquet", buffer.getvalue())
        self.next_index += 1

    def drop(self, rows: set[tuple[str, str]]) -> None:
        """Remove the (path, hash) rows a recomputed image supersedes from the parts, and that image's maps and
        overlay files first (a kill in between leaves the row, dropped again on the next resume)."""
        drop_rows(sorted(self.parts.glob("part-*.parquet")), rows, self._drop_maps, self.out)

    def _drop_maps(self, part: Path, paths: set[str]) -> None:
        shard = self.maps / f"maps-{_index(part):05d}.npz"
        if shard.is_file():
            with np.load(shard) as data:
                kept = {k: data[k] for k in data.files if k.split("::", 1)[0] not in paths}
            _write_atomic(shard, pack_maps(kept))

    def consolidate(self) -> Path:
        """`results.parquet`: every part as a row group of one file, in part order (flat memory)."""
        import pyarrow.parquet as pq
        target = self.out / "results.parquet"
        temp = target.with_name(target.name + ".tmp")
        with pq.ParquetWriter(temp, schema()) as writer:
            for part in sorted(self.parts.glob("part-*.parquet")):
                writer.write_table(pq.read_table(part, schema=schema()))
        os.replace(temp, target)
        return target


def check_settings(out: Path, params_hash: str) -> None:
    """Refuse to resume `out` when its job.json was written with other parameters (both runners): resuming
    would add a second row per image. A folder without job.json has nothing to check."""
    job = Path(out) / "job.json"
    if job.is_file() and json.loads(job.read_text(encoding="utf-8")).get("params_hash") != params_hash:
        raise UserError(f"'{out}' holds a job run with other parameters; resume it with the same "
                        "model and settings, or write to another folder.")


def write_settings(out: Path, spec_dict: dict, params_hash: str) -> None:
    """OUT/job.json: the JobSpec and its parameter hash, what check_settings compares a resume with."""
    _write_atomic(Path(out) / "job.json", json.dumps({"spec": spec_dict, "params_hash": params_hash},
                                                     indent=1).encode())


def finished(files: Iterable[Path], params_hash: str) -> dict[str, dict[str, bool]]:
    """What each relative path has in these Parquet files written with `params_hash` (the parts of an
    in-process job, the files of a Ray job): {content hash: whether that row is an error row}, hash '' for a
    file that could not be read; what `resume_state` checks an item against."""
    import pyarrow.parquet as pq
    found: dict[str, dict[str, bool]] = {}
    for file in files:
        t = pq.read_table(file, columns=["path", "hash", "params_hash", "error"])
        for path, digest, params, error in zip(*(t.column(c).to_pylist() for c in ("path", "hash", "params_hash",
                                                                                   "error"))):
            if params == params_hash:
                found.setdefault(path, {})[digest or ""] = error is not None
    return found


def resume_state(item: Item, done: dict[str, dict[str, bool]], retry_errors: bool = False) -> tuple[bool, set]:
    """The resume rule of both runners: (whether the item is done, the rows its run supersedes). Done means a
    row with its relative path and the content hash of its bytes as they are now was written with the same
    parameters, an error row included (same bytes, same settings: the same error) unless `retry_errors`; a
    file that could not be read has no hash and is always tried again. Every other row of that path (a file
    replaced in place, the error row being retried) is a (path, hash) pair for drop_rows, so after any number
    of resumes an image has one row. The file is read only if its name was written."""
    written = done.get(item.name)
    if not written:
        return False, set()
    blob = read_bytes(item.path)
    current = content_hash(blob) if blob is not None else ""
    is_done = bool(current) and current in written and not (retry_errors and written[current])
    return is_done, {(item.name, h) for h in written if not (is_done and h == current)}


def plan_resume(items: Iterable[Item], done: dict[str, dict[str, bool]], retry_errors: bool = False
                ) -> tuple[list[Item], set]:
    """The items still to run and every row their runs supersede (resume_state on each item); both runners
    drop those rows before they run, so a new row never meets the old one it replaces."""
    todo, stale = [], set()
    for item in items:
        is_done, superseded = resume_state(item, done, retry_errors)
        stale |= superseded
        if not is_done:
            todo.append(item)
    return todo, stale


def drop_rows(files: Iterable[Path], rows: set[tuple[str, str]],
              first: Callable[[Path, set[str]], None] | None = None, out: Path | None = None) -> None:
    """Rewrite (atomically) each Parquet file that holds one of these (path, hash) rows, without them: the
    rows a recomputed image supersedes, so results keep one row per image. `first(file, paths)` runs before a
    file is rewritten (the in-process store drops those paths' maps from the file's shard); with `out`, the
    overlay files the dropped rows name (under `out`) are deleted first too, so an image whose class changed
    leaves no overlay of its old class."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    if not rows:
        return
    for file in files:
        keys = [(r["path"], r["hash"]) for r in pq.read_table(file, columns=["path", "hash"]).to_pylist()]
        keep = [key not in rows for key in keys]
        if all(keep):
            continue
        if first is not None:
            first(Path(file), {path for (path, _), kept in zip(keys, keep) if not kept})
        whole = pq.read_table(file)
        if out is not None:
            gone = whole.filter(pa.array([not k for k in keep])).column("explanations").to_pylist()
            remove_overlays(Path(out), [e["overlay"] for entries in gone for e in entries if e["overlay"]])
        buffer = io.BytesIO()
        pq.write_table(whole.filter(pa.array(keep)), buffer)
        _write_atomic(Path(file), buffer.getvalue())


OVERLAY_SUFFIXES = re.compile(r"png|npy|raw\.npy|valid\.npy|[A-Za-z_]+\.png")  # render.save_attribution's


def remove_overlays(out: Path, overlays: Iterable[str]) -> None:
    """Delete each overlay PNG (a path relative to `out`) and the files Attribution.save wrote beside it
    under the same prefix (heatmap, raw and validity .npy, panels such as `.class_map.png`)."""
    for overlay in overlays:
        png = out / overlay
        prefix = png.name[:-len(".png")] + "."
        for path in png.parent.glob(glob.escape(prefix) + "*"):
            if OVERLAY_SUFFIXES.fullmatch(path.name[len(prefix):]):
                path.unlink(missing_ok=True)


def read_results(out: str | os.PathLike):
    """A job's result rows as a pyarrow Table: `results.parquet` when complete, else the parts so far; a Ray
    job's folder of Parquet files reads the same (its inline `maps` column dropped)."""
    import pyarrow.parquet as pq
    import pyarrow as pa
    files = result_files(out)
    if not files:
        raise UserError(f"'{out}' holds no job results; run a job into it first.")
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables([t.drop(["maps"]) if "maps" in t.column_names else t for t in tables])


def result_files(out: str | os.PathLike) -> list[Path]:
    """The Parquet files that hold a job's rows: `results.parquet` when complete, else its parts, else (a Ray
    job) the folder's own Parquet files; none for a folder without results."""
    out = Path(out)
    if (out / "results.parquet").is_file():
        return [out / "results.parquet"]
    return sorted((out / "parts").glob("part-*.parquet")) or sorted(out.glob("*.parquet"))


def count_errors(out: str | os.PathLike) -> int:
    """How many error rows a job's results hold (reads only the `error` column)."""
    import pyarrow.parquet as pq
    columns = [pq.read_table(f, columns=["error"]).column("error") for f in result_files(out)]
    return sum(len(c) - c.null_count for c in columns)


def iter_maps(out: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Every stored map as (key, float16 array): from the npz shards, or from a Ray job's inline column."""
    import pyarrow.parquet as pq
    out = Path(out)
    shards = sorted((out / "maps").glob("maps-*.npz"))
    for shard in shards:
        with np.load(shard) as data:
            for key in data.files:
                yield key, data[key]
    if not shards and not (out / "parts").is_dir():
        for f in sorted(out.glob("*.parquet")):
            for cell in pq.read_table(f, columns=["maps"]).column("maps").to_pylist():
                if cell:
                    with np.load(io.BytesIO(cell)) as data:
                        for key in data.files:
                            yield key, data[key]


def read_maps(out: str | os.PathLike, keys=None) -> dict[str, np.ndarray]:
    """Stored maps by key (all, or only `keys`); for a few maps of a large job, use iter_maps."""
    wanted = None if keys is None else set(keys)
    return {k: v for k, v in iter_maps(out) if wanted is None or k in wanted}


def _index(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(data)
    os.replace(temp, path)
