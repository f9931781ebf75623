"""How many forwards gradient-free SmoothGrad needs to agree with autograd SmoothGrad on EfficientNet-Lite0.

On skimage's chelsea, the bundled EfficientNet-Lite0, its predicted class and SmoothGrad's 15% noise, this
compares the signed channel-sum map of `smoothgrad-fd` (n antithetic pairs, 2n forwards on onnxruntime) with
autograd `smoothgrad` (m noisy gradients through the converter) at the same sigma, by Pearson correlation.
Two autograd runs with different seeds show how far the reference itself is from the exact smoothed gradient.
The estimator's error is a sum of n independent terms, so corr^2 ~ n / (n + a): each measured point gives
a = n (1/corr^2 - 1), and corr = 0.9 needs n = a * 0.81 / 0.19 pairs.

    python benchmarks/smoothgrad_fd.py [--pairs 256,1024,4096] [--reference 256]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from skimage import data

import onnxplain

MODEL = Path(__file__).resolve().parent.parent / "models" / "efficientnet_lite0.onnx"


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="256,1024,4096")
    parser.add_argument("--reference", type=int, default=256, help="autograd SmoothGrad samples per reference")
    args = parser.parse_args()

    explainer = onnxplain.Explainer(MODEL, device="cpu", quiet=True)
    image = data.chelsea()
    target = int(explainer.predict([image])[0].top[0][0])
    start = time.perf_counter()
    references = [explainer.explain([image], method="smoothgrad", target=target, n=args.reference, sigma=0.15,
                                    signed=True, seed=seed)[0].raw for seed in (0, 1)]
    print(f"autograd smoothgrad, {args.reference} samples x 2 seeds: {time.perf_counter() - start:.1f} s; "
          f"the two agree to r = {correlation(*references):.3f}")
    reference = (references[0] + references[1]) / 2
    print(f"{'pairs':>6} {'forwards':>8} {'seconds':>8} {'r':>6} {'pairs for r = 0.9':>18}")
    for pairs in (int(p) for p in args.pairs.split(",")):
        start = time.perf_counter()
        [fd] = explainer.explain([image], method="smoothgrad-fd", target=target, n=pairs, noise_level=0.15,
                                 signed=True, seed=0)
        seconds = time.perf_counter() - start
        r = correlation(fd.raw, reference)
        needed = pairs * (1 / r ** 2 - 1) * 0.81 / 0.19 if r > 0 else float("inf")
        print(f"{pairs:>6} {2 * pairs:>8} {seconds:>8.1f} {r:>6.3f} {needed:>18,.0f}")


if __name__ == "__main__":
    main()
