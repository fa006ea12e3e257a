"""XLA:CPU's own options on charlm's real train step (issue 14), as A/B medians of alternating rounds.

    python -m bench.xla_flags --setup seed-big --rounds 2 --out bench/results/xla-flags.json

Each (variant, round) is a fresh `bench.charlm_peer train` child with XLA_FLAGS set to the
variant's options, interleaved round by round, one at a time (bench.run's run_peer).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from bench import run

VARIANTS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "no-ynn-fusion": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn-dot+eltwise": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise",
    "xnn-dot+eltwise": "--xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_fusion_type=dot,eltwise",
    # XLA:CPU prefers 256-bit vectors by default (AVX-512 used to lower the clock); ignored without AVX-512.
    "vector-512": "--xla_cpu_prefer_vector_width=512",
    "onednn-dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "vector-512+onednn-dot": "--xla_cpu_prefer_vector_width=512 --xla_cpu_experimental_onednn_fusion_type=dot",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", default="seed-big", choices=sorted(run.SETUPS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="which to time ('default' is always included: the ratios are against it)")
    p.add_argument("--text", default=run.DEFAULT_TEXT)
    p.add_argument("--out", default=str(run.REPO / "bench" / "results" / "xla-flags.json"))
    a = p.parse_args()
    text = str(Path(a.text).resolve())
    chosen = {n: VARIANTS[n] for n in ["default", *a.variants] if n in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in chosen}
    for rnd in range(a.rounds):
        for name, flags in chosen.items():
            os.environ["XLA_FLAGS"] = flags  # run_peer passes the environment on
            r = run.run_peer("charlm", run.peer_args("train", a.setup, run.FULL, text), 900)
            times[name].append(r.get("step_s", float("nan")) * 1000)
            print(f"round {rnd + 1} {name}: {times[name][-1]:.1f} ms/step (busy {r.get('other_cores', 0):.2f})",
                  flush=True)
    base = statistics.median(times["default"])
    summary = {n: {"median_ms": statistics.median(t), "speedup": base / statistics.median(t), "ms": t}
               for n, t in times.items()}
    Path(a.out).write_text(json.dumps({"setup": a.setup, "variants": chosen, "summary": summary}, indent=1))
    for n, s in summary.items():
        print(f"{n:18s} {s['median_ms']:8.1f} ms/step  {s['speedup']:.3f}x default")


if __name__ == "__main__":
    main()
