"""The recurrence's matrix products alone, XLA against PyTorch: the floor under charlm's CPU step (issue 14).

    python -m bench.gemm_probe --rounds 3

A train step of one LSTM layer does 2 T small products (forward h U and backward dz U^T, one
per time step) and one large weight-gradient product (bench.perfkit.step_gemms). This times
exactly those, with nothing else around them, in a `gemm` child of each peer
(bench.charlm_peer: inside one lax.scan, as charlm runs them; bench.peers.torch_peer: torch.mm,
oneDNN/MKL), each product on its own input and into one output buffer, interleaved round by
round, one process at a time. `floor ms per layer` is the sum over one layer's recurrent
products in a step (seed-big has two layers, and its second layer's input-side products come on
top): where XLA's floor alone exceeds PyTorch's whole step, no change outside the products can
put charlm ahead on this CPU.
Writes bench/results/gemm-probe.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench import run

IMPLS = ("charlm", "torch")
SETUPS = ("seed-small", "seed-big")  # dense-small's recurrence has seed-small's shapes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=5, help="timed chains per child")
    p.add_argument("--text", default=run.DEFAULT_TEXT)
    p.add_argument("--out", default=str(run.REPO / "bench" / "results" / "gemm-probe.json"))
    a = p.parse_args()
    text = str(Path(a.text).resolve())
    raw = []
    for rnd in range(a.rounds):
        for setup in SETUPS:
            for impl in IMPLS:
                r = run.run_peer(impl, ["gemm", "--text", text, "--setup", setup, "--reps", str(a.reps)], 900)
                if "error" in r:
                    raise SystemExit(f"{impl} gemm {setup} failed: {r['error']}\n{r['stderr_tail']}")
                raw.append({"round": rnd + 1, **r})
                print(f"round {rnd + 1} {impl} {setup}: "
                      + ", ".join(f"{g['name']} {g['us_per_call']:.0f} us" for g in r["gemms"])
                      + f" (busy {r['other_cores']:.2f})", flush=True)
    summary = {}
    for setup in SETUPS:
        for impl in IMPLS:
            recs = [r for r in raw if r["impl"] == impl and r["setup"] == setup]
            gemms = [{**g, "us_per_call": statistics.median(r["gemms"][i]["us_per_call"] for r in recs),
                      "gflops": statistics.median(r["gemms"][i]["gflops"] for r in recs),
                      "ms_per_step": statistics.median(r["gemms"][i]["ms_per_step"] for r in recs)}
                     for i, g in enumerate(recs[0]["gemms"])]
            summary[f"{setup} {impl}"] = {"gemms": gemms, "floor_ms_per_layer": sum(g["ms_per_step"] for g in gemms),
                                         "versions": recs[0]["versions"], "busy": max(r["other_cores"] for r in recs)}
    Path(a.out).write_text(json.dumps({"rounds": a.rounds, "summary": summary, "raw": raw}, indent=1))
    print(f"\nmedians over {a.rounds} rounds; floor = the products of one layer's recurrence in one train step")
    print(f"{'setup':11s} {'impl':7s} {'product':20s} {'M x K x N':>18s} {'calls':>6s} {'us/call':>8s} {'GFLOP/s':>8s}")
    for key, s in summary.items():
        setup, impl = key.split()
        for g in s["gemms"]:
            shape = f"{g['m']}x{g['k']}x{g['n']}"
            print(f"{setup:11s} {impl:7s} {g['name']:20s} {shape:>18s} {g['calls']:6d} {g['us_per_call']:8.0f} "
                  f"{g['gflops']:8.1f}")
        print(f"{setup:11s} {impl:7s} {'floor ms per layer':20s} {s['floor_ms_per_layer']:43.1f}   (busy {s['busy']:.2f})")


if __name__ == "__main__":
    main()
