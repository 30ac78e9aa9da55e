"""Start-up: wall time of a one-image caption, a question and a short generation, as a user runs them.

Median of 5 runs each (issue 11 asks for <= 3 s wall on an idle machine):

    captioner caption SCENE.png
    captioner ask SCENE.png "what color is the circle"
    lm generate --max-tokens 20

Prints wall and user+sys CPU seconds per command and the load average before and after, since other work on the
machine stretches wall time (CPU time much less so). `--json` prints one object.

    python scripts/bench_startup.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, user+sys CPU seconds) of one run; raises when the command fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="runs per command (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    from captioner.scenes import generate_scenes
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as work:
        generate_scenes(work, 1, seed=424242)
        scene = os.path.join(work, "images", "00001.png")
        commands = {
            "captioner caption": [py, "-m", "captioner.cli", "caption", scene],
            "captioner ask": [py, "-m", "captioner.cli", "ask", scene, "what color is the circle"],
            "lm generate --max-tokens 20": [py, "-m", "lm.cli", "generate", "--max-tokens", "20", "--seed", "1"],
        }
        load_before = os.getloadavg()
        timed(commands["captioner caption"], env)  # warm the file cache once
        report = {"runs": args.runs, "load_average_before": [round(x, 2) for x in load_before], "commands": {}}
        for name, command in commands.items():
            runs = [timed(command, env) for _ in range(args.runs)]
            report["commands"][name] = {"median_wall_s": round(statistics.median(w for w, _ in runs), 2),
                                        "median_cpu_s": round(statistics.median(c for _, c in runs), 2),
                                        "wall_s": [round(w, 2) for w, _ in runs]}
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        report["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"median of {args.runs} runs; load average before {report['load_average_before']}, after "
          f"{report['load_average_after']} ({report['cpus']} CPUs)")
    for name, r in report["commands"].items():
        print(f"{name:30} wall {r['median_wall_s']:5.2f} s   user+sys {r['median_cpu_s']:5.2f} s   "
              f"(runs: {', '.join(f'{w:.1f}' for w in r['wall_s'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
