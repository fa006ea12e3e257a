"""Generalisation benchmark: a preset trained with the test tail held out, scored on that tail
static and dynamic, against PPMd, bzip2 and xz on the same split.

    python -m bench.generalisation --text ../shared/data/wonderland.txt --name alice --preset best

The protocol (BENCHMARKS.md): the text is cleaned as training cleans it; the test tail is its
contiguous last 10 %, the validation slice the 10 % before it. `train.py --test-frac 0.1` never
reads the tail; early stopping and the best checkpoint look at the validation slice only, with the text before it as what was read first. Only then
is the tail scored, once, with the settings fixed in charlm (`DynamicSettings()`): the model
reads (and dynamic evaluation adapts on) the text before the tail, as the compressors do.

Runs go to bench/results/runs/<name>-<variant>/ (the real train.py, one job at a time); the
figures to bench/results/generalisation-<name>.json, and a table is printed.
"""

from __future__ import annotations

import argparse
import bz2
import json
import lzma
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax

from bench.finetune import sample_stats

from charlm.config import DynamicSettings, make_run_config
from charlm.corpus import clean_text, read_text
from charlm.dataset import held_out_splits
from charlm.scoring import evaluate_checkpoint

RESULTS = Path("bench/results")
TEST_FRAC, VAL_FRAC = 0.1, 0.1
TEMPERATURES = (0.5, 0.8, 1.0)


def compressed_cost(head: str, tail: str) -> dict:
    """nats/char of the tail given the head: compressed(head + tail) - compressed(head)."""
    import pyppmd

    coders = {"ppmd-order10": lambda b: pyppmd.compress(b, max_order=10),
              "bzip2-9": lambda b: bz2.compress(b, 9),
              "xz-9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)}
    head_b, whole_b = head.encode("utf-8"), (head + tail).encode("utf-8")
    return {name: 8 * (len(c(whole_b)) - len(c(head_b))) / len(tail) * math.log(2) for name, c in coders.items()}


def train_run(run_dir: Path, text: str, preset: str, budget: float | None, extra: list[str]) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "train.py", "--preset", preset, "--text", text, "--test-frac", str(TEST_FRAC),
           "--val-frac", str(VAL_FRAC), "--ckpt-dir", str(run_dir), *extra]
    if budget is not None:
        cmd += ["--max-time", str(budget)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def score_test(run_dir: Path, text_path: str) -> dict:
    """Static, rms-dynamic and sgd-dynamic cost of the test tail, with charlm's fixed settings."""
    out = {}
    for name, settings in (("rms", DynamicSettings()), ("sgd", DynamicSettings(method="sgd", lr=3e-2))):
        t0 = time.perf_counter()
        r = evaluate_checkpoint(str(run_dir), text_path, val_frac=TEST_FRAC, dynamic=settings)
        out["static"] = r["nats_per_char"]
        out["test_chars"] = r["chars"]
        out[f"dynamic_{name}"] = r["dynamic"]["nats_per_char"]
        out[f"dynamic_{name}_settings"] = r["dynamic_settings"]
        out[f"dynamic_{name}_seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True)
    p.add_argument("--name", required=True, help="names the results file and run dirs (alice, code, manual)")
    p.add_argument("--preset", nargs="*", default=["best"], help="presets to train and score")
    p.add_argument("--budget", type=float, help="--max-time per run (default: the preset's)")
    p.add_argument("--train-flags", default="", help="more train.py flags for every run, e.g. '--embed-dropout 0.1'")
    p.add_argument("--skip-training", action="store_true", help="score the runs already in bench/results/runs")
    p.add_argument("--samples", action="store_true", help="samples and memorisation for each preset")
    args = p.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    out_file = RESULTS / f"generalisation-{args.name}.json"
    report = json.loads(out_file.read_text()) if out_file.exists() else {}
    cfg = make_run_config("best")
    text = clean_text(read_text(args.text), lowercase=cfg.data.lowercase, strip=cfg.data.strip)
    test_start, val_start = held_out_splits(len(text), VAL_FRAC, TEST_FRAC)
    report["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                         "jax": jax.__version__, "device": str(jax.devices()[0])}
    report["split"] = {"chars": len(text), "train": val_start, "val": test_start - val_start,
                       "test": len(text) - test_start}
    report["compressors_test"] = compressed_cost(text[:test_start], text[test_start:])
    report["compressors_val"] = compressed_cost(text[:val_start], text[val_start:test_start])
    runs = report.setdefault("runs", {})
    for key in args.preset:
        run_dir = RESULTS / "runs" / f"{args.name}-{key}"
        if not args.skip_training:
            t0 = time.perf_counter()
            train_run(run_dir, args.text, key, args.budget, args.train_flags.split())
            runs[key] = {"train_seconds": time.perf_counter() - t0, "budget_minutes": args.budget}
        entry = runs.setdefault(key, {})
        metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
        entry["epochs"] = len(metrics)
        entry["val"] = min(m["val_loss"] for m in metrics)
        entry["test"] = score_test(run_dir, args.text)
        if args.samples:
            entry["samples"] = {str(t): sample_stats(str(run_dir), text[:val_start], t) for t in TEMPERATURES}
        out_file.write_text(json.dumps(report, indent=1))

    ppmd = report["compressors_test"]["ppmd-order10"]
    print(f"\n{args.name}: {report['split']}")
    for name, nats in report["compressors_test"].items():
        print(f"{name:28s} test {nats:.4f} nats/char")
    for key, r in runs.items():
        t = r.get("test", {})
        if t:
            print(f"{key:28s} test static {t['static']:.4f}  dynamic rms {t['dynamic_rms']:.4f}  sgd "
                  f"{t['dynamic_sgd']:.4f}  (val {r['val']:.4f}, {r['epochs']} epochs; static "
                  f"{100 * (t['static'] / ppmd - 1):+.1f}% vs PPMd)")


if __name__ == "__main__":
    main()
