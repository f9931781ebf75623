"""Latency of a grafted model (maps inside the graph) against the plain model and against onnxplain's method.

    PYTHONPATH=.:converters python benchmarks/graft.py [MODEL] [--repeat N]

Prints milliseconds per image for: the plain model, the grafted model (one inference, logits + maps), and
onnxplain's own explain call; and the ratios. Default model: the bundled EfficientNet-Lite0.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    import onnxplain
    from onnxplain.graft import METHODS, graft

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.model is None:
        import real_models
        args.model = real_models.EFFICIENTNET_LITE0
    explainer = onnxplain.load(args.model, quiet=True)
    batch = explainer.prepare(str(ROOT / "models" / "chelsea.jpg"))
    feed = {explainer.model.inputs[0].name: batch.x}
    options = ort.SessionOptions()
    plain = ort.InferenceSession(explainer.model.proto.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
    base = best_ms(lambda: plain.run(None, feed), args.repeat)
    print(f"{'method':<14}{'plain ms':>10}{'grafted ms':>12}{'onnxplain ms':>14}{'graft/plain':>13}"
          f"{'onnxplain/graft':>17}")
    for method in METHODS:
        session = ort.InferenceSession(graft(explainer.model, method).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        grafted = best_ms(lambda: session.run(None, feed), args.repeat)
        if method == "activations":
            layer = explainer.model.auto_layer()[0]
            own = best_ms(lambda: explainer.forward(_fresh(explainer, batch), [layer]), args.repeat)
        else:
            own = best_ms(lambda: explainer.explain(_fresh(explainer, batch), method=method), args.repeat)
        print(f"{method:<14}{base:>10.2f}{grafted:>12.2f}{own:>14.2f}{grafted / base:>13.2f}{own / grafted:>17.2f}")


def _fresh(explainer, batch):
    """The same preprocessed batch without its cached forward, so every timed call runs the model."""
    batch.cache.clear()
    return batch


if __name__ == "__main__":
    main()
