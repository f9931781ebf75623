"""Embeddings of a folder at any layer, nearest neighbours, and 2-D maps (t-SNE or PCA).

`embed` streams a folder through the model and keeps one vector per image (spatial
layers global-average pooled), with the predicted class; it saves as `.npy` plus a JSON
index of file names. `neighbours` finds the closest images to queries (cosine or L2).
`tsne` lays the vectors out in 2-D; `scatter_plot` draws the points coloured by predicted
class and `image_map` snaps them to a grid of images (Karpathy's CNN-codes maps).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from .. import render
from ..writing import save_npy, write_json
from ..images import ImageSource
from .common import SCHEMA_VERSION, FeatureError, chunks, image_name, list_images, load_thumbnail, pooled

if TYPE_CHECKING:
    from ..explainer import Explainer

METRICS = ("cosine", "l2")
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (188, 189, 34), (23, 190, 207), (57, 59, 121), (173, 73, 74)]
OTHER = (160, 160, 160)
TSNE_THREADS_FROM = 5000  # points from which t-SNE uses every OpenMP thread


@dataclass
class Embedding:
    """One vector per image at one layer, with file names and the model's predicted class per image."""
    vectors: np.ndarray          # (N, D) float32
    names: list[str]
    layer: str
    pooled: bool                 # True when a spatial layer was global-average pooled
    predicted: list[int]
    labels: list[str]            # class name of each image's prediction ('' when the model has no labels)
    model: str = ""

    def __len__(self) -> int:
        return len(self.vectors)

    def index(self) -> dict:
        """The JSON index that sits beside the .npy file."""
        return {"schema_version": SCHEMA_VERSION, "model": self.model, "layer": self.layer, "pooled": self.pooled,
                "dims": int(self.vectors.shape[1]),
                "images": [{"name": n, "predicted": p, "label": lab}
                           for n, p, lab in zip(self.names, self.predicted, self.labels)]}

    def save(self, path: str | Path) -> dict[str, str]:
        """Write `<path>.npy` (vectors) and `<path>.json` (index); returns both paths."""
        stem = Path(path).with_suffix("") if Path(path).suffix in (".npy", ".json") else Path(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_npy(str(stem) + ".npy", self.vectors.astype(np.float32))
        write_json(str(stem) + ".json", self.index())
        return {"vectors": str(stem) + ".npy", "index": str(stem) + ".json"}

    @classmethod
    def load(cls, path: str | Path) -> "Embedding":
        """Read an embedding saved by `save` (pass the .npy or the .json path)."""
        stem = Path(path).with_suffix("") if Path(path).suffix in (".npy", ".json") else Path(path)
        vectors_path, index_path = Path(str(stem) + ".npy"), Path(str(stem) + ".json")
        if not vectors_path.is_file() or not index_path.is_file():
            raise FeatureError(f"Embedding '{stem}' needs both {vectors_path.name} and {index_path.name}; "
                               "write them with `onnxplain features embed`.")
        index = json.loads(index_path.read_text())
        images = index["images"]
        vectors = np.load(vectors_path)
        if len(vectors) != len(images):
            raise FeatureError(f"{vectors_path.name} holds {len(vectors)} vectors but {index_path.name} lists "
                               f"{len(images)} images; write them again together.")
        return cls(vectors.astype(np.float32), [i["name"] for i in images], index["layer"], index["pooled"],
                   [int(i["predicted"]) for i in images], [i.get("label", "") for i in images], index.get("model", ""))


def embed(explainer: "Explainer", images: str | Sequence[ImageSource], layer: str | None = "auto",
          output: str | None = None) -> Embedding:
    """One vector per image at `layer` (spatial layers global-average pooled), and each image's top class."""
    model = explainer.model
    name = model.resolve_layer(layer, output)
    output = explainer.output_name(output)
    info = model.tensors[name]
    sources = list_images(images)
    vectors, predicted = [], []
    for _, batch in chunks(explainer, sources, "embed"):
        values = explainer.run(batch.x, list(dict.fromkeys([name, output])))
        vectors.append(pooled(values[name], info).astype(np.float32))
        predicted.extend(int(i) for i in values[output].reshape(len(batch), -1).argmax(axis=1))
    return Embedding(np.concatenate(vectors), [image_name(s, i) for i, s in enumerate(sources)], name, info.spatial,
                     predicted, [explainer.label(p) for p in predicted],
                     str(model.path) if model.path else "")


# ---- neighbours ----------------------------------------------------------------------------
@dataclass
class Neighbours:
    """The k images of an embedding closest to one query, closest first."""
    query: str
    names: list[str]
    indices: list[int]
    distances: list[float]

    def as_dict(self) -> dict:
        return {"query": self.query, "neighbours": [{"name": n, "index": i, "distance": d}
                                                    for n, i, d in zip(self.names, self.indices, self.distances)]}


def distances(vectors: np.ndarray, queries: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """(Q, N) distances: cosine distance (1 - cosine similarity) or Euclidean (l2)."""
    if metric not in METRICS:
        raise FeatureError(f"Unknown metric '{metric}'; use cosine or l2.")
    vectors, queries = vectors.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        a = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        b = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        return np.clip(1 - b @ a.T, 0, 2)
    squared = (queries ** 2).sum(1)[:, None] + (vectors ** 2).sum(1)[None] - 2 * queries @ vectors.T
    return np.sqrt(np.maximum(squared, 0))


def neighbours(embedding: Embedding, queries: Sequence[ImageSource] | Sequence[int] | str, k: int = 5,
               metric: str = "cosine", explainer: "Explainer | None" = None) -> list[Neighbours]:
    """The k nearest images of the embedding for each query, the query's own file left out.

    Queries are indices into the embedding, or images (files, a folder, arrays) that
    `explainer` embeds at the embedding's layer.
    """
    if k < 1:
        raise FeatureError(f"k must be at least 1 (got {k}).")
    by_index = not isinstance(queries, (str, os.PathLike, np.ndarray)) and len(queries) > 0 and \
        all(isinstance(q, (int, np.integer)) for q in queries)
    if by_index:
        index = [int(q) for q in queries]
        if not all(0 <= i < len(embedding) for i in index):
            raise FeatureError(f"Query indices must lie in 0..{len(embedding) - 1}.")
        vectors, names = embedding.vectors[index], [embedding.names[i] for i in index]
    else:
        if explainer is None:
            raise FeatureError("Image queries need the model: pass explainer= (or query by index).")
        found = embed(explainer, queries, embedding.layer)
        vectors, names = found.vectors, found.names
    table = distances(embedding.vectors, vectors, metric)
    same = {_same_file_key(n): i for i, n in enumerate(embedding.names)}
    results = []
    for row, name in zip(table, names):
        row = row.copy()
        own = same.get(_same_file_key(name))
        if own is not None:
            row[own] = np.inf
        order = [int(i) for i in np.argsort(row, kind="stable")[:k] if np.isfinite(row[i])]
        results.append(Neighbours(name, [embedding.names[i] for i in order], order, [float(row[i]) for i in order]))
    return results


def _same_file_key(name: str) -> str:
    return os.path.realpath(name) if os.path.exists(name) else name


def neighbours_grid(results: Sequence[Neighbours], tile_size: int = 96) -> np.ndarray:
    """One row per query: the query, then its neighbours labelled with their distances."""
    k = max((len(r.names) for r in results), default=0)
    tiles, labels = [], []
    for result in results:
        tiles.append(load_thumbnail(result.query, tile_size))
        labels.append("query " + Path(result.query).stem)
        for name, distance in zip(result.names, result.distances):
            tiles.append(load_thumbnail(name, tile_size))
            labels.append(f"{distance:.3f} {Path(name).stem}")
        tiles.extend(np.full((tile_size, tile_size, 3), 255, np.uint8) for _ in range(k - len(result.names)))
        labels.extend("" for _ in range(k - len(result.names)))
    return render.grid(tiles, columns=k + 1, labels=labels, tile_size=tile_size)


# ---- 2-D maps ------------------------------------------------------------------------------
def tsne(embedding: Embedding | np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = 30.0,
         init: str = "pca") -> np.ndarray:
    """(N, 2) coordinates by scikit-learn's Barnes-Hut t-SNE, or by PCA; the same seed gives the same map.

    t-SNE starts from the PCA layout by default (stable global structure; the seed then
    changes nothing); init="random" starts from a seeded random layout.
    """
    vectors = embedding.vectors if isinstance(embedding, Embedding) else np.asarray(embedding, np.float32)
    if method not in ("tsne", "pca"):
        raise FeatureError(f"Unknown method '{method}'; use tsne or pca.")
    if init not in ("pca", "random"):
        raise FeatureError(f"Unknown t-SNE initialisation '{init}'; use pca or random.")
    if len(vectors) < 3:
        raise FeatureError(f"A 2-D map needs at least 3 images (got {len(vectors)}).")
    vectors = vectors.astype(np.float32)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise FeatureError("2-D maps need scikit-learn; install it with `pip install scikit-learn`.") from None
    if method == "pca":
        from sklearn.decomposition import PCA
        return PCA(n_components=2, svd_solver="full", random_state=seed).fit_transform(vectors).astype(np.float32)
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    perplexity = min(perplexity, (len(vectors) - 1) / 3)
    model = TSNE(n_components=2, perplexity=perplexity, init=init, learning_rate="auto", method="barnes_hut",
                 random_state=seed)
    # OpenMP threads cost more than they give below a few thousand points (10-30x slower on a busy CPU).
    with threadpool_limits(1 if len(vectors) < TSNE_THREADS_FROM else None, user_api="openmp"):
        return model.fit_transform(vectors).astype(np.float32)


def scatter_plot(coords: np.ndarray, classes: Sequence[int], class_names: Sequence[str] | None = None,
                 size: int = 800, legend: int = 11) -> np.ndarray:
    """Points coloured by class (the `legend` most frequent classes; the rest gray), with a legend on the right."""
    classes = [int(c) for c in classes]
    counts: dict[int, int] = {}
    for c in classes:
        counts[c] = counts.get(c, 0) + 1
    ranked = sorted(counts, key=lambda c: (-counts[c], c))[:min(legend, len(PALETTE))]
    colour = {c: PALETTE[i] for i, c in enumerate(ranked)}
    names = {}
    for c, n in zip(classes, class_names or [""] * len(classes)):
        names.setdefault(c, n)
    margin, panel = 24, 260
    canvas = np.full((size, size + panel, 3), 255, np.uint8)
    points = _fit(coords, size, margin)
    for (x, y), c in sorted(zip(points, classes), key=lambda p: p[1] in colour):  # gray first, colours on top
        cv2.circle(canvas, (x, y), 5, colour.get(c, OTHER), -1, cv2.LINE_AA)
        cv2.circle(canvas, (x, y), 5, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (margin // 2, margin // 2), (size - margin // 2, size - margin // 2), (200, 200, 200), 1)
    entries = [(colour[c], f"{c} {names.get(c, '')}".strip(), counts[c]) for c in ranked]
    rest = sum(counts[c] for c in counts if c not in colour)
    if rest:
        entries.append((OTHER, "other classes", rest))
    for i, (rgb, text, count) in enumerate(entries):
        y = margin + 10 + i * 22
        cv2.circle(canvas, (size + 14, y), 6, rgb, -1, cv2.LINE_AA)
        cv2.putText(canvas, f"{text[:26]} ({count})", (size + 26, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def _fit(coords: np.ndarray, size: int, margin: int) -> list[tuple[int, int]]:
    """Coordinates scaled into the square [margin, size - margin], aspect kept."""
    coords = np.asarray(coords, np.float64)
    low = coords.min(axis=0)
    span = max(float((coords.max(axis=0) - low).max()), 1e-12)
    scaled = (coords - low) / span * (size - 2 * margin) + margin
    return [(int(round(x)), int(round(y))) for x, y in scaled]


def grid_assignment(coords: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """(rows, columns) image index per cell (-1: empty): row by row, each cell takes the nearest unused point.

    Coordinates are min-max scaled to the unit square first; cells are visited row-major.
    """
    from scipy.spatial import cKDTree
    coords = np.asarray(coords, np.float64)
    low, span = coords.min(axis=0), np.maximum(np.ptp(coords, axis=0), 1e-12)
    unit = (coords - low) / span
    tree = cKDTree(unit)
    used = np.zeros(len(unit), bool)
    cells = np.full((rows, columns), -1, np.int64)
    for r in range(rows):
        for c in range(columns):
            if used.all():
                return cells
            centre = ((c + 0.5) / columns, (r + 0.5) / rows)
            want = 8
            while True:
                _, found = tree.query(centre, k=min(want, len(unit)))
                free = [int(i) for i in np.atleast_1d(found) if not used[i]]
                if free or want >= len(unit):
                    break
                want *= 4
            cells[r, c] = free[0]
            used[free[0]] = True
    return cells


def image_map(coords: np.ndarray, names: Sequence[str], side: int | None = None, tile_size: int = 64,
              max_side: int = 40) -> np.ndarray:
    """The 2-D map as a grid of images: each cell shows the image nearest it (side x side cells)."""
    side = side or min(max_side, math.ceil(math.sqrt(len(names))))
    cells = grid_assignment(coords, side, side)
    canvas = np.full((side * tile_size, side * tile_size, 3), 255, np.uint8)
    for (r, c), index in np.ndenumerate(cells):
        if index >= 0:
            canvas[r * tile_size:(r + 1) * tile_size, c * tile_size:(c + 1) * tile_size] = \
                load_thumbnail(names[index], tile_size, crop=True)
    return canvas
