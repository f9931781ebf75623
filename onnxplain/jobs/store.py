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

import io
import json
import os
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
        job = self.out / "job.json"
        if resume and job.is_file():
            previous = json.loads(job.read_text(encoding="utf-8")).get("params_hash")
            if previous != params_hash:
                raise UserError(f"'{self.out}' holds a job run with other parameters; resume it with the same "
                                "model and settings, or write to another folder.")
            self._clean()
        else:
            for path in (self.parts, self.maps, self.out / "overlays"):
                shutil.rmtree(path, ignore_errors=True)
            (self.out / "results.parquet").unlink(missing_ok=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        self.maps.mkdir(parents=True, exist_ok=True)
        _write_atomic(job, json.dumps({"spec": spec_dict, "params_hash": params_hash}, indent=1).encode())
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

    def done(self) -> dict[str, set[str]]:
        """Content hashes by relative path of every row already written with these parameters (see resume_state)."""
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
        """Remove the (path, hash) rows a recomputed image supersedes from the parts, and that image's maps
        from their shards first (a kill in between leaves the row, dropped again on the next resume)."""
        drop_rows(sorted(self.parts.glob("part-*.parquet")), rows, self._drop_maps)

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


def finished(files: Iterable[Path], params_hash: str) -> dict[str, set[str]]:
    """Content hashes by relative path of the rows in these Parquet files written with `params_hash` (the
    parts of an in-process job, the files of a Ray job); what `resume_state` checks an item against."""
    import pyarrow.parquet as pq
    found: dict[str, set[str]] = {}
    for file in files:
        t = pq.read_table(file, columns=["path", "hash", "params_hash"])
        for path, digest, params in zip(*(t.column(c).to_pylist() for c in ("path", "hash", "params_hash"))):
            if params == params_hash and digest:
                found.setdefault(path, set()).add(digest)
    return found


def resume_state(item: Item, done: dict[str, set[str]], blob: bytes | None = None) -> tuple[bool, set]:
    """The resume rule of both runners: (whether the item is done, the rows it supersedes). Done means a row with
    its relative path and the content hash of its bytes as they are now was written with the same parameters;
    the rows of that path for other bytes (a file replaced in place) are (path, hash) pairs for drop_rows.
    `blob` is the file's bytes where the caller read them; else they are read only if the name was written."""
    hashes = done.get(item.name, set())
    if hashes and blob is None:
        blob = read_bytes(item.path)
    current = content_hash(blob) if hashes and blob is not None else None
    return current in hashes, {(item.name, h) for h in hashes if h != current}


def drop_rows(files: Iterable[Path], rows: set[tuple[str, str]],
              first: Callable[[Path, set[str]], None] | None = None) -> None:
    """Rewrite (atomically) each Parquet file that holds one of these (path, hash) rows, without them: the
    rows a recomputed image supersedes, so results keep one row per image. `first(file, paths)` runs before a
    file is rewritten (the in-process store drops those paths' maps from the file's shard)."""
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
        buffer = io.BytesIO()
        pq.write_table(pq.read_table(file).filter(pa.array(keep)), buffer)
        _write_atomic(Path(file), buffer.getvalue())


def read_results(out: str | os.PathLike):
    """A job's result rows as a pyarrow Table: `results.parquet` when complete, else the parts so far; a Ray
    job's folder of Parquet files reads the same (its inline `maps` column dropped)."""
    import pyarrow.parquet as pq
    import pyarrow as pa
    out = Path(out)
    if (out / "results.parquet").is_file():
        return pq.read_table(out / "results.parquet")
    files = sorted((out / "parts").glob("part-*.parquet")) or sorted(out.glob("*.parquet"))
    if not files:
        raise UserError(f"'{out}' holds no job results; run a job into it first.")
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables([t.drop(["maps"]) if "maps" in t.column_names else t for t in tables])


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
