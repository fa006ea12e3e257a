"""charlm's train step against another git revision's, with PyTorch alongside: A/B medians of
alternating rounds (issue 14); torch-tuned is PyTorch with charlm's allocator settings (bench.run.PEER_ENV).

    python -m bench.ab_step --baseline af8374b --setup seed-big --rounds 4

Each (impl, round) is a fresh child (bench.run's run_peer), one at a time; the baseline runs
from a temporary worktree of its revision.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench import run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, metavar="REV")
    p.add_argument("--setup", default="seed-big", choices=sorted(run.SETUPS))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--text", default=run.DEFAULT_TEXT)
    p.add_argument("--out", default=str(run.REPO / "bench" / "results" / "ab-step.json"))
    a = p.parse_args()
    base = run.checkout(a.baseline)
    text = str(Path(a.text).resolve())
    times: dict[str, list[float]] = {"charlm": [], "charlm-base": [], "torch": [], "torch-tuned": []}
    for rnd in range(a.rounds):
        for impl in times:
            r = run.run_peer(impl, run.peer_args("train", a.setup, run.FULL, text), 900, base)
            times[impl].append(r["step_s"] * 1000)
            print(f"round {rnd + 1} {impl}: {times[impl][-1]:.1f} ms/step (busy {r['other_cores']:.2f})", flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    Path(a.out).write_text(json.dumps({"setup": a.setup, "baseline": a.baseline, "ms": times, "median_ms": medians},
                                      indent=1))
    print({k: round(v, 1) for k, v in medians.items()})


if __name__ == "__main__":
    main()
