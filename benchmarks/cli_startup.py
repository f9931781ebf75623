"""How long `onnxplain --help` takes, against a bare `python -c pass`: the median of N fresh interpreters each.

The CLI imports only click at start-up (commands load lazily, heavy imports stay inside them), so the
difference is the cost of click and the command modules. Target: under 0.5 s. Also times
`onnxplain methods --help`. Runs this checkout's onnxplain (cwd and PYTHONPATH), not an installed one.

    python benchmarks/cli_startup.py [--runs 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.5  # seconds for `onnxplain --help`
CASES = {
    "python -c pass": "pass",
    "onnxplain --help": "from onnxplain.cli import main; main(['--help'], prog_name='onnxplain')",
    "onnxplain methods --help": "from onnxplain.cli import main; main(['methods', '--help'], prog_name='onnxplain')",
}


def median_seconds(code: str, runs: int) -> float:
    """Median wall time of `python -c code` in a fresh interpreter, output discarded."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "converters"),
                                                        os.environ.get("PYTHONPATH", "")])}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="Fresh interpreters per case.")
    args = parser.parse_args()
    results = {name: median_seconds(code, args.runs) for name, code in CASES.items()}
    base = results["python -c pass"]
    for name, seconds in results.items():
        extra = "" if name == "python -c pass" else f"  (+{seconds - base:.3f} s over python)"
        print(f"{name:<26} {seconds:.3f} s median of {args.runs}{extra}")
    verdict = "meets" if results["onnxplain --help"] < TARGET else "MISSES"
    print(f"onnxplain --help {verdict} the {TARGET} s target")


if __name__ == "__main__":
    main()
