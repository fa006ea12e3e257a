"""Learning benchmark: held-out loss vs wall-clock for seed-small, seed-big and fast, against compressors.

    python -m bench.learning --text ../shared/data/wonderland.txt --budget 15

Everything runs in one process tree, one job at a time: the compressor baselines, then each
preset trained by the real `train.py` (--val-frac 0.1 --max-time BUDGET) into
bench/results/runs/<preset>/, then each best checkpoint evaluated on the same tail (static
and dynamic), with the tutorial's metric on the training text. The fast checkpoint also gives
samples at four temperatures and a memorisation figure. Writes bench/results/learning.json,
bench/results/learning.png and prints a table. Needs the [bench] extra (pyppmd, matplotlib).
"""

from __future__ import annotations

import argparse
import bz2
import json
import lzma
import math
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from charlm.checkpoint import restore
from charlm.config import make_run_config
from charlm.corpus import clean_text, read_text
from charlm.data import split_point
from charlm.config import DynamicSettings
from charlm.scoring import Score, dynamic_nll, last_window_nll, tail_nll
from charlm.plot import plot_runs, read_metrics
from charlm.sampling import generate

RESULTS = Path("bench/results")
PRESETS = ("seed-small", "seed-big", "fast")
TEMPERATURES = (0.0, 0.5, 0.8, 1.0)
DYNAMIC_GRID = [(lr, seg) for lr in (1e-3, 3e-3, 1e-2, 3e-2) for seg in (20, 50, 100)]


def compressor_baselines(train: str, val: str) -> dict:
    """Cost of the tail given the head: compressed(head + tail) - compressed(head), in nats/char."""
    import pyppmd

    coders = {"ppmd-order10": lambda b: pyppmd.compress(b, max_order=10),
              "bzip2-9": lambda b: bz2.compress(b, 9),
              "xz-9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)}
    head, whole = train.encode("utf-8"), (train + val).encode("utf-8")
    out = {}
    for name, compress in coders.items():
        bits = 8 * (len(compress(whole)) - len(compress(head)))
        out[name] = {"bits_per_char": bits / len(val), "nats_per_char": bits / len(val) * math.log(2)}
    return out


def memorisation(samples: list[str], train_text: str, n: int = 20) -> float:
    """Share of the samples' n-char substrings that occur verbatim in the training text."""
    grams = {train_text[i:i + n] for i in range(len(train_text) - n + 1)}
    subs = [s[i:i + n] for s in samples for i in range(len(s) - n + 1)]
    return sum(g in grams for g in subs) / max(1, len(subs))


def train_preset(preset: str, text: str, budget: float) -> Path:
    run_dir = RESULTS / "runs" / preset
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "train.py", "--preset", preset, "--text", text, "--val-frac", "0.1",
           "--max-time", str(budget), "--ckpt-dir", str(run_dir)]
    if preset.startswith("seed"):  # as many epochs as fit in the budget
        cmd += ["--epochs", "1000"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run_dir


def evaluate_run(run_dir: Path, text: str, tune_dynamic: bool) -> dict:
    state, cfg, vocab, meta = restore(run_dir)
    tokens = vocab.encode(text)
    split = split_point(len(tokens), 0.1)
    train_tok, val_tok = tokens[:split], tokens[split:]
    T = cfg.data.seq_length
    t0 = time.perf_counter()
    out = {"epochs_run": len(read_metrics(run_dir)), "best_epoch": meta["epoch"], "monitor": meta["metric"],
           "best_monitored_loss": meta["loss"],
           "val_stream": Score.from_nll(tail_nll(state.params, cfg.model, tokens, split, T)).to_dict(),
           "val_last_window": Score.from_nll(tail_nll(state.params, cfg.model, tokens, split, T,
                                                      "last-window")).to_dict(),
           # the tutorial's metric on its training text, on every 10th window to save time
           "train_last_window_stride10": Score.from_nll(
               last_window_nll(state.params, cfg.model, train_tok, T, stride=10)).to_dict()}
    # Plain SGD steps on the tail only, as this benchmark measured them before Krause's rule
    # (bench/generalisation.py measures that, with the protocol of a separate test tail).
    def sgd(lr=3e-2, segment=20):
        settings = DynamicSettings(method="sgd", lr=lr, decay=0.0, segment=segment, adapt_chars=0)
        return dynamic_nll(state.params, cfg.model, val_tok, tokens[:split], settings)[0]
    if tune_dynamic:
        out["dynamic_grid"] = {f"lr={lr:g},segment={seg}": float(np.mean(sgd(lr, seg))) for lr, seg in DYNAMIC_GRID}
    out["val_dynamic_default"] = Score.from_nll(sgd()).to_dict()
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True)
    p.add_argument("--budget", type=float, default=15.0, help="training minutes per preset")
    p.add_argument("--only", nargs="*", default=list(PRESETS))
    p.add_argument("--skip-training", action="store_true", help="evaluate the runs already in bench/results/runs")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_file = RESULTS / "learning.json"
    report = json.loads(out_file.read_text()) if out_file.exists() else {"runs": {}}
    cfg = make_run_config()
    text = clean_text(read_text(args.text), lowercase=cfg.data.lowercase, strip=cfg.data.strip)
    split = split_point(len(text), 0.1)
    report["machine"] = {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                         "python": platform.python_version(), "jax": jax.__version__,
                         "device": str(jax.devices()[0])}
    report["split"] = {"train_chars": split, "val_chars": len(text) - split}
    report["compressors"] = compressor_baselines(text[:split], text[split:])
    for preset in args.only:
        run_dir = RESULTS / "runs" / preset if args.skip_training else train_preset(preset, args.text, args.budget)
        report["runs"][preset] = evaluate_run(run_dir, text, tune_dynamic=preset == "fast")
        report["runs"][preset]["curve"] = [{k: r[k] for k in ("epoch", "elapsed", "train_loss", "val_loss")}
                                           for r in read_metrics(run_dir)]
        out_file.write_text(json.dumps(report, indent=1))
    if "fast" in report["runs"]:
        state, cfg, vocab, meta = restore(RESULTS / "runs" / "fast")
        prime = meta["seeds"][0]
        samples = {str(t): generate(state.params, cfg, vocab, prime, length=600, temperature=t, seed=0)[0]
                   for t in TEMPERATURES}
        many = generate(state.params, cfg, vocab, prime, length=1000, temperature=1.0, seed=1, num_samples=8)
        report["samples"] = {"prime": prime, "by_temperature": samples,
                             "memorised_20gram_share_t1.0": memorisation(many, text[:split]),
                             "memorised_20gram_share_t0.8": memorisation(
                                 generate(state.params, cfg, vocab, prime, length=1000, temperature=0.8, seed=1,
                                          num_samples=8), text[:split])}
    out_file.write_text(json.dumps(report, indent=1))
    plot_runs({name: read_metrics(RESULTS / "runs" / name) for name in report["runs"]
               if (RESULTS / "runs" / name).exists()}, RESULTS / "learning.png",
              title=f"Alice, last 10% held out, {report['machine']['cpus']}-core CPU")

    print(f"\n{'':18s} {'val nats/char':>14s} {'val bits/char':>14s}  notes")
    for name, r in report["compressors"].items():
        print(f"{name:18s} {r['nats_per_char']:14.4f} {r['bits_per_char']:14.4f}  compressor, tail given head")
    for name, r in report["runs"].items():
        s, d = r["val_stream"], r["val_dynamic_default"]
        print(f"{name:18s} {s['nats_per_char']:14.4f} {s['bits_per_char']:14.4f}  static stream; dynamic "
              f"{d['nats_per_char']:.4f}; last-window val {r['val_last_window']['nats_per_char']:.4f}; "
              f"tutorial metric on train {r['train_last_window_stride10']['nats_per_char']:.4f}; "
              f"{r['epochs_run']} epochs")


if __name__ == "__main__":
    main()
