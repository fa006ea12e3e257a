"""CPU performance suite: charlm against plain PyTorch and the tutorial's Keras code (issue 5).

    python -m bench.run --suite cpu            # the full suite: a quiet machine, ~10-15 min
    python -m bench.run --suite cpu --quick    # smoke test: few steps and chars

Measures training throughput (seed-small, seed-big and dense-small; see bench.perfkit.SETUPS),
the XLA f32 matmul ceiling and sampling speed (peak RSS against corpus size was bench/memory.py
until commit f8f6369; BENCHMARKS.md). Every measurement is a fresh child process (`bench.charlm_peer`,
`bench.peers.torch_peer`, `bench.peers.keras_peer`) that prints one JSON line, so peak RSS and
thread pools never leak between implementations; only one runs at a time. Rounds interleave
the implementations (charlm, torch, keras, charlm, ...) and the summary takes medians over
rounds. Ratios are charlm's throughput over the peer's: above 1, charlm is faster.
Writes bench/results/cpu.json (cpu-quick.json with --quick) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from bench.perfkit import DEFAULT_TEXT, SEQ_LENGTH, SETUPS, run_child, train_flops
from charlm.host import GLIBC_ENV

REPO = Path(__file__).resolve().parents[1]
PEERS = {"charlm": "bench.charlm_peer", "charlm-bf16": "bench.charlm_peer", "torch": "bench.peers.torch_peer",
         "keras": "bench.peers.keras_peer", "charlm-base": "bench.charlm_peer", "torch-tuned": "bench.peers.torch_peer",
         "charlm-system": "bench.charlm_peer"}
# charlm-base: charlm at another revision (--baseline REV, checked out in a temporary worktree),
# interleaved with this one: an A/B of a change measured side by side.
# charlm-bf16: the same charlm step with --precision bfloat16 (bf16 recurrent matmuls, f32 state and loss).
PRECISION = {"charlm-bf16": "bfloat16"}
# charlm's train task tunes glibc's allocator as charlm.train does (charlm.host); torch and keras run
# as their users run them, with glibc untouched (CHARLM_ALLOCATOR=system is a guard: they import
# charlm's data helpers through bench.perfkit). torch-tuned is the torch peer given the same allocator
# settings through the environment, for comparison, and charlm-system is charlm with them off.
PEER_ENV = {"torch": {"CHARLM_ALLOCATOR": "system"}, "keras": {"CHARLM_ALLOCATOR": "system"},
            "torch-tuned": GLIBC_ENV, "charlm-system": {"CHARLM_ALLOCATOR": "system"}}
DEFAULT_IMPLS = ["charlm", "charlm-bf16", "torch", "keras"]
PARTS = ("train", "sample")

# Per-task settings: the full suite, and --quick, which only shows that everything runs.
FULL = {"rounds": 3, "warmup": 3, "steps": 20, "chars": 1000, "window_chars": 100, "streams": 64, "reps": 3,
        "matmul_n": 2048, "timeout": 900}
QUICK = {"rounds": 1, "warmup": 1, "steps": 3, "chars": 100, "window_chars": 10, "streams": 64, "reps": 1,
         "matmul_n": 512, "timeout": 300}


def peer_args(task: str, setup: str | None, s: dict, text: str) -> list[str]:
    args = [task, "--text", text, "--reps", str(s["reps"])]
    if task == "train":
        args += ["--setup", setup, "--warmup", str(s["warmup"]), "--steps", str(s["steps"])]
    elif task == "sample":
        args += ["--chars", str(s["chars"]), "--window-chars", str(s["window_chars"]), "--streams", str(s["streams"])]
    elif task == "matmul":
        args += ["--matmul-n", str(s["matmul_n"])]
    return args


def run_peer(impl: str, args: list[str], timeout: float, baseline: Path | None = None) -> dict:
    root = baseline if impl == "charlm-base" else REPO
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(root),
           "CHARLM_BENCH_PRECISION": PRECISION.get(impl, "float32"), **PEER_ENV.get(impl, {})}
    child = run_child([sys.executable, "-m", PEERS[impl], *args], str(root), timeout, env)
    lines = [line for line in child["stdout"].splitlines() if line.startswith("{")]
    if child["rc"] != 0 or not lines:
        return {"impl": impl, "task": args[0], "error": f"exit {child['rc']}", "stderr_tail": child["stderr_tail"],
                "args": args}
    return {**json.loads(lines[-1]), "impl": impl, "other_cores": child["other_cores"]}  # the peer names itself charlm


def checkout(rev: str) -> Path:
    """A worktree of `rev` in a temporary directory (removed at exit)."""
    import atexit
    import subprocess
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="charlm-base-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(where), rev], cwd=REPO, check=True,
                   capture_output=True)
    atexit.register(subprocess.run, ["git", "worktree", "remove", "--force", str(where)], cwd=REPO)
    return where


def schedule(parts: list[str], impls: list[str]) -> list[tuple[str, str, str | None]]:
    """One round's (impl, task, setup) list: each measurement for every implementation in turn."""
    jobs = [("charlm", "matmul", None)] if "train" in parts and "charlm" in impls else []
    if "train" in parts:
        jobs += [(impl, "train", setup) for setup in SETUPS for impl in impls]
    if "sample" in parts:
        jobs += [(impl, "sample", None) for impl in impls if impl not in PRECISION]
    return jobs


def median_of(records: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in records)


def summarize(raw: list[dict]) -> dict:
    """Medians over rounds, the derived figures, and charlm's ratios to each peer."""
    ok = [r for r in raw if "error" not in r]
    matmul = [r for r in ok if r["task"] == "matmul"]
    ceiling = median_of(matmul, "gflops") if matmul else None
    train: dict = {}
    for setup_name, setup in SETUPS.items():
        rows = {}
        for impl in PEERS:
            recs = [r for r in ok if r["task"] == "train" and r["impl"] == impl and r["setup"] == setup_name]
            if not recs:
                continue
            step = median_of(recs, "step_s")
            scored = setup.batch * (SEQ_LENGTH if setup.objective == "all" else 1)
            gflops = train_flops(setup, recs[0]["vocab_size"]) / step / 1e9
            rows[impl] = {"step_s": step, "compile_s": median_of(recs, "first_step_s"),
                          "windows_per_s": setup.batch / step, "target_chars_per_s": scored / step,
                          "input_chars_per_s": setup.batch * SEQ_LENGTH / step,
                          "epoch_s": recs[0]["windows_per_epoch"] * step / setup.batch, "gflops": gflops,
                          "matmul_fraction": gflops / ceiling if ceiling else None,
                          "peak_rss_mb": median_of(recs, "peak_rss_mb"), "rounds": len(recs),
                          "other_cores": max(r["other_cores"] for r in recs)}
        ratios = {f"{ours}/{peer}": rows[peer]["step_s"] / rows[ours]["step_s"]
                  for ours in ("charlm", "charlm-bf16") for peer in ("torch", "torch-tuned", "keras", "charlm-base", "charlm-system")
                  if ours in rows and peer in rows}
        train[setup_name] = {"impls": rows, "throughput_ratios": ratios}
    sampling: dict = {}
    for r in ok:
        if r["task"] == "sample":
            for s in r["samples"]:
                sampling.setdefault(f"{r['impl']} {s['mode']} x{s['streams']}", []).append(
                    {**s, "other_cores": r["other_cores"]})
    sample = {name: {"chars_per_s": median_of(v, "chars_per_s"), "first_s": median_of(v, "first_s"),
                     "chars": v[0]["chars"], "rounds": len(v), "other_cores": max(x["other_cores"] for x in v)}
              for name, v in sampling.items()}

    def ratio(a: str, b: str) -> float | None:
        return sample[a]["chars_per_s"] / sample[b]["chars_per_s"] if a in sample and b in sample else None

    streams = max((s["streams"] for v in sampling.values() for s in v), default=1)
    sample_ratios = {
        "charlm stateful x1 / torch stateful x1": ratio("charlm stateful x1", "torch stateful x1"),
        f"charlm stateful x{streams} / torch stateful x{streams}":
            ratio(f"charlm stateful x{streams}", f"torch stateful x{streams}"),
        "charlm window x1 / keras predict-loop x1": ratio("charlm window x1", "keras predict-loop x1"),
        "charlm stateful x1 / keras predict-loop x1": ratio("charlm stateful x1", "keras predict-loop x1"),
    }
    errors = [{k: r[k] for k in ("impl", "task", "error", "args")} for r in raw if "error" in r]
    return {"matmul_gflops": ceiling, "train": train, "sample": sample,
            "sample_ratios": {k: v for k, v in sample_ratios.items() if v is not None}, "errors": errors}


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(summary: dict) -> str:
    out = []
    if summary["train"] and any(v["impls"] for v in summary["train"].values()):
        out.append(f"training, median over rounds (XLA f32 matmul ceiling: {fmt(summary['matmul_gflops'], '.1f')} "
                   "GFLOP/s); ratios = charlm throughput / peer throughput")
        out.append(f"{'setup':12s} {'impl':13s} {'step ms':>8s} {'windows/s':>10s} {'target ch/s':>11s} "
                   f"{'1st step s':>10s} {'epoch s':>8s} {'GFLOP/s':>8s} {'% ceil':>7s} {'RSS MB':>7s} {'busy':>5s}")
        for name, t in summary["train"].items():
            for impl, r in t["impls"].items():
                pct = None if r["matmul_fraction"] is None else 100 * r["matmul_fraction"]
                out.append(f"{name:12s} {impl:13s} {1000 * r['step_s']:8.1f} {r['windows_per_s']:10.0f} "
                           f"{r['target_chars_per_s']:11.0f} {r['compile_s']:10.2f} {r['epoch_s']:8.0f} "
                           f"{r['gflops']:8.2f} {fmt(pct, '6.1f'):>7s} {r['peak_rss_mb']:7.0f} {r['other_cores']:5.2f}")
            if t["throughput_ratios"]:
                out.append(f"{'':12s} " + "  ".join(f"{k} {v:.2f}x" for k, v in t["throughput_ratios"].items()))
    if summary["sample"]:
        out.append("\nsampling (argmax; stateful times include the 100-char prime)")
        out.append(f"{'sampler':32s} {'chars':>6s} {'chars/s':>10s} {'1st call s':>10s} {'busy':>5s}")
        for name, s in summary["sample"].items():
            out.append(f"{name:32s} {s['chars']:6d} {s['chars_per_s']:10.0f} {s['first_s']:10.2f} "
                       f"{s['other_cores']:5.2f}")
        out += [f"  {k}: {v:.2f}x" for k, v in summary["sample_ratios"].items()]
    busy = [r["other_cores"] for t in summary["train"].values() for r in t["impls"].values()]
    busy += [s["other_cores"] for s in summary["sample"].values()]
    if busy:
        out.append(f"\nbusy = the most CPU (cores) other processes used during a row's runs; max {max(busy):.2f}"
                   + (": ABOVE 0.1, the timings are disturbed, rerun on an idle machine" if max(busy) > 0.1 else ""))
    out += [f"\nFAILED: {e['impl']} {e['task']} {' '.join(e['args'][1:])}: {e['error']}" for e in summary["errors"]]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=["cpu"], default="cpu")
    p.add_argument("--quick", action="store_true", help="a few steps and chars, a ~2-minute smoke test")
    p.add_argument("--text", default=DEFAULT_TEXT, help="the book (default: %(default)s)")
    p.add_argument("--out", help="JSON results (default: bench/results/cpu.json, or cpu-quick.json with --quick)")
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    p.add_argument("--impls", nargs="+", choices=list(PEERS), default=DEFAULT_IMPLS,
                   help="implementations to time (default: %(default)s)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default: 3; 1 with --quick)")
    p.add_argument("--baseline", metavar="REV", help="also time charlm at git revision REV (impl charlm-base)")
    args = p.parse_args()
    s = dict(QUICK if args.quick else FULL)
    s.update({"rounds": args.rounds} if args.rounds is not None else {})
    text = str(Path(args.text).resolve())
    out = Path(args.out or REPO / "bench" / "results" / ("cpu-quick.json" if args.quick else "cpu.json"))

    raw = []
    impls = args.impls + (["charlm-base"] if args.baseline and "charlm-base" not in args.impls else [])
    baseline = checkout(args.baseline) if args.baseline else None
    jobs = schedule(args.only, impls)
    for rnd in range(s["rounds"] if jobs else 0):
        for impl, task, setup in jobs:
            print(f"round {rnd + 1}/{s['rounds']}: {impl} {task} {setup or ''}", file=sys.stderr, flush=True)
            raw.append({"round": rnd + 1, **run_peer(impl, peer_args(task, setup, s, text), s["timeout"], baseline)})
    summary = summarize(raw)
    results = {"suite": args.suite, "quick": args.quick, "settings": s,
               "machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": os.cpu_count(), "python": platform.python_version()},
               "summary": summary, "raw": raw}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(summary))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
