#!/usr/bin/env python
"""`captioner serve` under load: latency, throughput with dynamic batching against one image per call, memory.

Starts `captioner serve` as a real process on 127.0.0.1 (bundled captioner, beam 3), warms it up, then sends
--requests caption requests (one scene image each, TF Serving's row format) from --concurrency client threads over
keep-alive HTTP connections, and reports errors, p50/p99 latency and throughput. The server's resident memory
(VmRSS) is read after the warm-up and after the run. Then the same server is started with --max-batch 1 (one image
per model call: no batching) and measured the same way on --baseline-requests requests, in the same run, so the two
throughputs are compared on the same machine under the same load.

Usage:
    .venv/bin/python scripts/bench_serve.py                          # 500 requests at concurrency 16, baseline 64
    .venv/bin/python scripts/bench_serve.py --requests 100 --baseline-requests 32 --json

Goals (issue 12): 0 errors; batched throughput >= 3x the --max-batch 1 throughput; RSS after the run <= 1.1x RSS
after warm-up. The baseline runs fewer requests by default only because it is slow (one beam search per image);
throughput is a rate, and --baseline-requests 500 measures it on as many requests.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


class Server:
    """`captioner serve --port 0 --json ...` as a child process; `.port`, `.pid`; stop() ends it."""

    def __init__(self, *flags: str):
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen([sys.executable, "-m", "captioner.cli", "serve", "--port", "0", "--json",
                                      "--vqa-model", "none", *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench_serve: the server did not start:\n{self.proc.stderr.read()[-3000:]}")
        self.port, self.pid = json.loads(line)["port"], self.proc.pid
        # Drain stderr so a chatty server never blocks on a full pipe.
        self._stderr = []
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load(port: int, bodies: list[bytes], requests: int, concurrency: int, label: str, progress: bool) -> dict:
    """Sends `requests` POSTs (cycling through `bodies`) from `concurrency` threads; returns latencies and errors."""
    from tqdm import tqdm
    local = threading.local()
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies, errors = [], []
    bar = tqdm(total=requests, desc=label, unit="req", disable=not progress, file=sys.stderr)

    def connection():
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        return local.conn

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                conn = connection()
                conn.request("POST", "/v1/models/captioner:predict", body=bodies[i % len(bodies)],
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = json.loads(response.read())
                ok = response.status == 200 and payload["predictions"][0]["captions"]
                problem = None if ok else f"HTTP {response.status}: {payload}"
            except Exception as e:  # counted, and the connection is opened afresh
                local.conn = None
                problem = f"{type(e).__name__}: {e}"
            seconds = time.perf_counter() - start
            with lock:
                latencies.append(seconds)
                if problem:
                    errors.append(problem)
                bar.update(1)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - start
    bar.close()
    latencies.sort()

    def percentile(q):
        return latencies[min(len(latencies) - 1, int(round(q * (len(latencies) - 1))))]

    return {"requests": requests, "concurrency": concurrency, "errors": len(errors), "first_errors": errors[:3],
            "seconds": round(wall, 2), "throughput_rps": round(requests / wall, 3),
            "p50_ms": round(1000 * percentile(0.50), 1), "p99_ms": round(1000 * percentile(0.99), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests in the batched run (default 500)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (default 16)")
    parser.add_argument("--max-batch", type=int, default=16, help="the batched server's --max-batch (default 16)")
    parser.add_argument("--batch-timeout-ms", type=float, default=10.0, help="its --batch-timeout-ms (default 10)")
    parser.add_argument("--baseline-requests", type=int, default=64,
                        help="requests against the --max-batch 1 server (default 64; 0 skips the baseline)")
    parser.add_argument("--images", type=int, default=32, help="distinct scene images sent in turn (default 32)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = parser.parse_args(argv)
    if min(a.requests, a.concurrency, a.max_batch, a.images) < 1 or a.baseline_requests < 0:
        parser.error("--requests, --concurrency, --max-batch and --images must be >= 1")
    progress = not a.json and sys.stderr.isatty()

    from captioner.scenes import generate_scenes
    with tempfile.TemporaryDirectory() as tmp:
        generate_scenes(tmp, a.images, seed=20261201)
        folder = os.path.join(tmp, "images")
        bodies = [json.dumps({"instances": [{"b64": base64.b64encode(open(os.path.join(folder, name), "rb").read())
                                                      .decode()}]}).encode()
                  for name in sorted(os.listdir(folder))]

    report = {"cpus": os.cpu_count(), "images": len(bodies)}
    server = Server("--max-batch", str(a.max_batch), "--batch-timeout-ms", str(a.batch_timeout_ms))
    try:
        warm = load(server.port, bodies, 2 * a.concurrency, a.concurrency, "warm-up", progress)
        rss_warm = rss_mb(server.pid)
        run = load(server.port, bodies, a.requests, a.concurrency, f"max-batch {a.max_batch}", progress)
        rss_after = rss_mb(server.pid)
    finally:
        server.stop()
    report["batched"] = {**run, "max_batch": a.max_batch, "batch_timeout_ms": a.batch_timeout_ms,
                         "warmup_errors": warm["errors"]}
    report["rss_mb"] = {"after_warmup": round(rss_warm, 1), "after_run": round(rss_after, 1),
                        "ratio": round(rss_after / rss_warm, 3)}
    if a.baseline_requests:
        server = Server("--max-batch", "1")
        try:
            load(server.port, bodies, a.concurrency, a.concurrency, "warm-up", progress)
            report["baseline"] = {**load(server.port, bodies, a.baseline_requests, a.concurrency, "max-batch 1",
                                         progress), "max_batch": 1}
        finally:
            server.stop()
        report["speedup"] = round(report["batched"]["throughput_rps"] / report["baseline"]["throughput_rps"], 2)

    if a.json:
        print(json.dumps(report))
    else:
        b = report["batched"]
        print(f"captioner serve on 127.0.0.1, {report['cpus']} CPUs, bundled captioner (beam 3), "
              f"{len(bodies)} scene images")
        rows = [("max-batch %d" % a.max_batch, b)] + ([("max-batch 1", report["baseline"])]
                                                      if "baseline" in report else [])
        print(f"{'server':14} {'requests':>8} {'conc.':>5} {'errors':>6} {'p50 ms':>9} {'p99 ms':>9} "
              f"{'req/s':>8}")
        for name, r in rows:
            print(f"{name:14} {r['requests']:8d} {r['concurrency']:5d} {r['errors']:6d} {r['p50_ms']:9.1f} "
                  f"{r['p99_ms']:9.1f} {r['throughput_rps']:8.2f}")
        if "speedup" in report:
            print(f"throughput with dynamic batching: {report['speedup']:.2f}x one image per call (goal >= 3x)")
        m = report["rss_mb"]
        print(f"server RSS: {m['after_warmup']:.0f} MB after warm-up, {m['after_run']:.0f} MB after the run "
              f"({m['ratio']:.3f}x; goal <= 1.1x)")
        for problem in b["first_errors"]:
            print(f"error: {problem}")
    ok = report["batched"]["errors"] == 0 and report["rss_mb"]["ratio"] <= 1.1 and report.get("speedup", 3) >= 3
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
