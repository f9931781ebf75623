"""Images per second of a batch job in-process and on Ray Data (1 and 2 actors), memory over time, and from the
measured per-image cost a plan for a million images.

    PYTHONPATH=.:converters python benchmarks/scale.py [--images 200] [--model models/efficientnet_lite0.onnx]
        [--method grad-cam] [--no-ray] [--machine-cores 16]

Images are skimage's photos, resized copies written to a temporary folder. Memory is the process's RSS (the
Ray runs: the driver's), sampled at every flush of the in-process job.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "converters")]


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def write_photos(folder: Path, count: int) -> None:
    import cv2
    import skimage.data as data
    photos = [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")]
    for i in range(count):
        image = photos[i % len(photos)]
        (folder / f"{i % 10}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i % 10}" / f"{i}.jpg"), cv2.resize(image, (320, 240))[:, :, ::-1])


def in_process(spec, folder: Path, out: Path, threads: int) -> tuple[float, list[float]]:
    from onnxplain.jobs import run_job
    samples = [rss_mb()]
    started = time.perf_counter()
    report = run_job(spec, folder, out, threads=threads, flush_every=spec.batch_size * 2,
                     on_flush=lambda n: samples.append(rss_mb()))
    return report.done / (time.perf_counter() - started), samples


def on_ray(spec, folder: Path, out: Path, actors: int) -> float:
    from onnxplain.jobs import read_results, run_ray
    started = time.perf_counter()
    run_ray(spec, folder, out, actors=actors)
    return read_results(out).num_rows / (time.perf_counter() - started)


def plan(rate: float, cores_here: int, cores: int, images: int = 1_000_000) -> str:
    """Machines and hours for `images` at the measured rate per core (CPU inference scales about with cores)."""
    per_core = rate / cores_here
    lines = [f"plan for {images:,} images at {per_core:.2f} images/s per core (measured here):"]
    for machines in (1, 4, 16, 64):
        hours = images / (per_core * cores * machines) / 3600
        lines.append(f"  {machines:>3} machines x {cores} cores: {hours:8.1f} h")
    lines.append(f"  for 24 h: {math.ceil(images / (per_core * cores * 24 * 3600))} machines of {cores} cores")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="models/efficientnet_lite0.onnx")
    parser.add_argument("--method", default="grad-cam")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--machine-cores", type=int, default=16, help="Cores per machine in the plan.")
    args = parser.parse_args()
    from onnxplain.jobs import JobSpec
    cores = len(os.sched_getaffinity(0))
    spec = JobSpec(args.model, methods=(args.method,) if args.method else (), batch_size=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        write_photos(folder, args.images)
        rate, samples = in_process(spec, folder, Path(tmp) / "local", cores)
        print(f"in-process      {rate:7.2f} images/s ({cores} cores, {args.images} images, {args.method})")
        print("RSS MB at each flush: " + " ".join(f"{s:.0f}" for s in samples))
        print(f"RSS rise after the first flush: {max(samples[1:]) - samples[1]:.0f} MB" if len(samples) > 2 else "")
        if not args.no_ray:
            import ray
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
            for actors in (1, 2):
                ray_rate = on_ray(spec, folder, Path(tmp) / f"ray{actors}", actors)
                print(f"ray {actors} actor(s)  {ray_rate:7.2f} images/s (start-up and actor builds included)")
            ray.shutdown()
        print(plan(rate, cores, args.machine_cores))


if __name__ == "__main__":
    main()
