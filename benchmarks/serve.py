"""Bounded load test of `onnxplain serve`: N /explain requests at concurrency C on EfficientNet-Lite0.

Starts the server as a subprocess on a free loopback port, samples its resident memory before, during and
after the load, and prints p50/p99 latency, throughput and failures. With --rounds 2 or more the load is
repeated and the RSS after each round is printed: a server whose memory is bounded levels off after the first.
Exits 1 on any failed request or when the server's memory grew by more than --max-growth-mb in all.

    python benchmarks/serve.py [--requests 200] [--concurrency 16] [--rounds 1] [--method eigen-cam]
"""
from __future__ import annotations

import argparse
import base64
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "efficientnet_lite0.onnx"
IMAGE = ROOT / "models" / "chelsea.jpg"
HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of a process in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "onnxplain.cli", "serve", str(MODEL), "--host", HOST, "--port", str(port),
               "--max-batch", str(args.max_batch), "--workers", str(args.workers),
               "--queue-size", str(args.queue_size)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(client: httpx.Client, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server exited:\n" + server.stderr.read())
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--method", default="eigen-cam")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="Repeat the load to see memory level off.")
    parser.add_argument("--max-growth-mb", type=float, default=256.0)
    args = parser.parse_args()

    port = free_port()
    server = start_server(args, port)
    body = {"image": base64.b64encode(IMAGE.read_bytes()).decode(), "method": args.method}
    limits = httpx.Limits(max_connections=args.concurrency)
    try:
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=300, limits=limits) as client:
            wait_ready(client, server)
            for _ in range(2):  # build the sessions the method needs before measuring
                client.post("/explain", json=body).raise_for_status()
            before = rss_mb(server.pid)
            peak, stop = [before], threading.Event()

            def sample() -> None:
                while not stop.wait(0.05):
                    peak.append(rss_mb(server.pid))

            def one(_: int) -> tuple[int, float]:
                start = time.perf_counter()
                try:
                    status = client.post("/explain", json=body).status_code
                except httpx.HTTPError:
                    status = 0
                return status, time.perf_counter() - start

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            rounds = []  # RSS after each round
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = []
                for _ in range(args.rounds):
                    results += pool.map(one, range(args.requests))
                    rounds.append(rss_mb(server.pid))
            elapsed = time.perf_counter() - start
            stop.set()
            sampler.join()
            after = rss_mb(server.pid)
            health = client.get("/health").json()
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()

    statuses = Counter(status for status, _ in results)
    latency = np.array([seconds for _, seconds in results]) * 1000
    failures = len(results) - statuses.get(200, 0)
    growth = after - before
    print(f"{args.rounds} x {args.requests} x POST /explain method={args.method} concurrency={args.concurrency} "
          f"max_batch={args.max_batch} workers={args.workers} on {MODEL.name}")
    print(f"statuses      {dict(statuses)}  failures {failures}")
    print(f"latency ms    p50 {np.percentile(latency, 50):.0f}  p99 {np.percentile(latency, 99):.0f}  "
          f"max {latency.max():.0f}")
    print(f"throughput    {len(results) / elapsed:.1f} requests/s over {elapsed:.1f} s "
          f"({health['batches']} batches for {health['jobs']} jobs)")
    print(f"server RSS MB before {before:.0f}  peak {max(peak):.0f}  after {after:.0f}  growth {growth:+.0f}  "
          f"after each round {' '.join(f'{mb:.0f}' for mb in rounds)}")
    ok = failures == 0 and growth <= args.max_growth_mb
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
