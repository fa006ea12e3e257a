"""Does `--init-from` help? (issue 13): a model trained on other text for 10 minutes, then
fine-tuned on Alice for 5, against Alice from scratch for 5, scored on the same held-out tail.

    python -m bench.finetune --other /tmp/other/info      # ~22 minutes; one job at a time

`--other` is any text outside the repo (files or a directory; the figures in BENCHMARKS.md used
the GNU Info manuals of this machine, `zcat /usr/share/info/*.gz` with control chars removed).
Both Alice runs hold out the same test tail (`--test-frac 0.1`) and validation slice
(`--val-frac 0.1`); the tail is scored once per run by `charlm.evaluate --val-frac 0.1`. Writes
bench/results/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, *args], cwd=REPO, check=True, capture_output=True, text=True).stdout
    print(f"  {' '.join(args[:3])} ... {time.monotonic() - t0:.0f} s", flush=True)
    return out


def score(ckpt: Path, text: str) -> dict:
    return json.loads(run("-m", "charlm.evaluate", "--ckpt", str(ckpt), "--text", text, "--val-frac", "0.1", "--json"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other", nargs="+", required=True, help="the other text (files or directories)")
    p.add_argument("--text", default=str(REPO.parent / "shared/data/wonderland.txt"))
    p.add_argument("--preset", default="fast")
    p.add_argument("--pretrain", type=float, default=10.0, help="minutes on the other text")
    p.add_argument("--budget", type=float, default=5.0, help="minutes on Alice, for each of the two runs")
    p.add_argument("--epochs", type=int, default=1000,
                   help="epoch cap of the Alice runs, high so that --budget is what ends them")
    p.add_argument("--keep-pretrained", action="store_true", help="reuse the pretrained run in --work")
    p.add_argument("--work", default="/tmp/charlm-finetune")
    p.add_argument("--out", default=str(REPO / "bench/results/finetune.json"))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    split = ["--test-frac", "0.1", "--val-frac", "0.1"]
    runs = {"pretrained": work / "pretrained", "fine-tuned": work / "fine-tuned", "scratch": work / "scratch"}
    for name, path in runs.items():
        if not (name == "pretrained" and args.keep_pretrained):
            subprocess.run(["rm", "-rf", str(path)], check=True)
    if not args.keep_pretrained:
        run("train.py", "--text", *args.other, "--preset", args.preset, "--max-time", str(args.pretrain),
            "--ckpt-dir", str(runs["pretrained"]))
    split += ["--epochs", str(args.epochs)]
    run("train.py", "--text", args.text, "--preset", args.preset, "--max-time", str(args.budget), *split,
        "--init-from", str(runs["pretrained"]), "--ckpt-dir", str(runs["fine-tuned"]))
    run("train.py", "--text", args.text, "--preset", args.preset, "--max-time", str(args.budget), *split,
        "--ckpt-dir", str(runs["scratch"]))
    record = {"command": " ".join(sys.argv), "preset": args.preset, "pretrain_minutes": args.pretrain,
              "budget_minutes": args.budget, "other": args.other, "runs": {}}
    for name, path in runs.items():
        metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        try:
            tail = score(path, args.text)
        except subprocess.CalledProcessError as e:  # e.g. the pretrained vocabulary lacks some of Alice's chars
            tail = {"error": e.stderr.strip()}
        record["runs"][name] = {"test_tail": tail, "epochs": len(metrics),
                                "best_val_loss": min((m["val_loss"] for m in metrics if "val_loss" in m), default=None)}
    Path(args.out).write_text(json.dumps(record, indent=1))
    for name, r in record["runs"].items():
        tail = r["test_tail"]
        shown = tail["error"] if "error" in tail else f"{tail['nats_per_char']:.4f} nats/char ({tail['bits_per_char']:.4f} bits)"
        print(f"{name:12s} test tail {shown}, {r['epochs']} epochs, best val {r['best_val_loss']}")


if __name__ == "__main__":
    main()
