"""What a finished job's store turns into for the commands that ran it: `explain.json` (the small-run
manifest of `onnxplain explain`) and the .npy/.json embedding that `features neighbours` and `tsne` read."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import UserError
from .store import iter_maps, read_results
from .work import JobSpec

SCHEMA_VERSION = 2     # 2: one job's rows (names are relative paths; maps in the store, keyed map_key)
MANIFEST_LIMIT = 1000  # explain.json is written for runs up to this many images; results.parquet always
FILES = {"overlay": ".png", "heatmap": ".npy", "raw": ".raw.npy", "valid": ".valid.npy",
         "gradient": ".gradient.png", "color": ".color.png"}


def method_params(spec: JobSpec) -> dict[str, dict]:
    """Every parameter of each method as it ran (defaults filled in), JSON-ready."""
    from .. import methods as registry
    return {m: json.loads(json.dumps(asdict(registry.get(m).make_params(**spec.params.get(m, {}))), default=str))
            for m in spec.methods}


def explain_manifest(out: str | os.PathLike, spec: JobSpec, limit: int = MANIFEST_LIMIT) -> dict | None:
    """explain.json's content from the job's rows (None above `limit` rows: read results.parquet instead)."""
    table = read_results(out)
    if table.num_rows > limit:
        return None
    params = method_params(spec)
    predictions, explanations, errors = [], [], []
    for row in table.to_pylist():
        if row["error"] is not None:
            errors.append({"image": row["path"], "source": row["source"], "error": row["error"]})
            continue
        predictions.append({"image": row["path"], "source": row["source"], "top": row["predictions"],
                            **({"text": row["text"]} if row.get("text") is not None else {})})
        explanations += [_explanation(Path(out), row, e, params) for e in row["explanations"]]
    return {"schema_version": SCHEMA_VERSION, "model": spec.model, "methods": list(spec.methods), "params": params,
            "target": spec.target, "layer": spec.layer, "maps": spec.maps, "results": "results.parquet",
            "predictions": predictions, "explanations": explanations, "errors": errors}


def _explanation(out: Path, row: dict, entry: dict, params: dict) -> dict:
    files = {}
    if entry["overlay"]:
        prefix = entry["overlay"][:-len(".png")]
        files = {kind: prefix + suffix for kind, suffix in FILES.items() if (out / (prefix + suffix)).is_file()}
    return {"image": row["path"], "method": entry["method"], "target": json.loads(entry["target"]),
            "layer": entry["layer"], "params": params.get(entry["method"], {}),
            "peak": {"x": entry["peak_x"], "y": entry["peak_y"], "value": entry["peak"]}, "mass": entry["mass"],
            "warnings": [entry["warning"]] if entry["warning"] else [], "map_key": entry["map_key"], "files": files}


def write_embedding(out: str | os.PathLike, path: str | os.PathLike, spec: JobSpec) -> dict[str, str]:
    """`<path>.npy` (one float32 vector per image without an error, in row order, written through a memory
    map so a million vectors never sit in memory) and `<path>.json` (the index `features.Embedding` reads:
    names are the image files, so `neighbours` and `tsne` find their thumbnails)."""
    from ..features.embed import Embedding
    from ..model import Model
    table = read_results(out)
    good = [r for r in table.select(["path", "source", "predictions", "error"]).to_pylist() if r["error"] is None]
    if not good:
        raise UserError(f"No image of the job in '{out}' could be embedded; see the errors in its results.")
    index = {r["path"]: i for i, r in enumerate(good)}
    stem = Path(path).with_suffix("") if Path(path).suffix in (".npy", ".json") else Path(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    vectors, layer = None, ""
    for key, value in iter_maps(out):
        name, kind, tensor = key.rsplit("::", 2)
        if kind != "embed" or name not in index:
            continue
        if vectors is None:
            vectors = np.lib.format.open_memmap(str(stem) + ".npy", "w+", np.float32, (len(good), value.size))
            layer = tensor
        vectors[index[name]] = value.ravel()
    vectors.flush()
    pooled = bool(Model.load(spec.model).tensors[layer].spatial)
    top = [r["predictions"][0] if r["predictions"] else {"index": -1, "name": ""} for r in good]
    embedding = Embedding(vectors, [r["source"] for r in good], layer, pooled, [t["index"] for t in top],
                          [t["name"] for t in top], str(spec.model))
    Path(str(stem) + ".json").write_text(json.dumps(embedding.index(), indent=2))
    return {"vectors": str(stem) + ".npy", "index": str(stem) + ".json"}
