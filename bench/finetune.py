"""Held-out runs on one text: the base model fine-tuned (issue 21), presets from scratch, and the
compressors on the same split, one run at a time.

    python -m bench.finetune --runs zero-shot finetune-5 finetune-15 best-15 finetune-no-base-5 --dynamic
    python -m bench.finetune --runs cand-lr2e-3 cand-lr1e-3 cand-light-lr1e-3 ...   # the preset's candidates
    python -m bench.finetune --runs best-15 --compressors --dynamic --text OTHER.txt --out bench/results/X.json

Every Alice run holds out the same test tail (`--test-frac 0.1`, the 14,444-char tail) and
validation slice (`--val-frac 0.1`): the candidates are compared on their best val loss, which
is what picks the `finetune` preset; the tail is scored once per run afterwards by
`charlm.evaluate --val-frac 0.1` (and with `--dynamic`). "zero-shot" scores the base with no
fine-tuning. Each run's samples (8 x 500 chars at T 1.0 and 0.8, seeds fixed) give the share of
real words (alphabetic runs of 2+ letters found in Alice's training part or the system word
list) and the share of 20-char substrings found verbatim in the training part. --compressors
adds PPMd, bzip2 and xz on the same split, each given the text before the slice (this was
bench/generalisation.py until 10fc6c2). Writes bench/results/finetune-base.json and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLIT = ["--test-frac", "0.1", "--val-frac", "0.1", "--epochs", "1000"]
BASE = ["--init-from", "base"]

# name: (train.py flags, minutes); None: the base scored as it is.
LIGHT = ["--embed-dropout", "0", "--input-dropout", "0"]
CANDIDATE = ["--preset", "best", *BASE]
RUNS: dict[str, tuple[list[str], float] | None] = {
    "zero-shot": None,
    "finetune-5": (["--preset", "finetune", *BASE], 5),
    "finetune-15": (["--preset", "finetune", *BASE], 15),
    "best-15": (["--preset", "best"], 15),
    "finetune-no-base-5": (["--preset", "finetune"], 5),
    # the candidates for the finetune preset (5 minutes each, compared on best val only)
    "cand-lr2e-3": (CANDIDATE, 5),
    "cand-lr1e-3": ([*CANDIDATE, "--lr", "1e-3"], 5),
    "cand-light-lr1e-3": ([*CANDIDATE, *LIGHT, "--dropout", "0.1", "--weight-drop", "0", "--lr", "1e-3"], 5),
    "cand-light-lr2e-3": ([*CANDIDATE, *LIGHT, "--dropout", "0.1", "--weight-drop", "0"], 5),
    "cand-d3-lr2e-3": ([*CANDIDATE, *LIGHT, "--dropout", "0.3", "--weight-drop", "0"], 5),
    "cand-d2-wd1-lr2e-3": ([*CANDIDATE, *LIGHT, "--dropout", "0.2", "--weight-drop", "0.1"], 5),
    "cand-d3-wd2-lr1e-3": ([*CANDIDATE, *LIGHT, "--dropout", "0.3", "--weight-drop", "0.2", "--lr", "1e-3"], 5),
    "cand-d2-wd1-ramp": ([*CANDIDATE, *LIGHT, "--dropout", "0.2", "--weight-drop", "0.1", "--body-lr-scale", "0.1",
                          "--body-lr-ramp", "100"], 5),
    "cand-d1-wd1-lr2e-3": ([*CANDIDATE, *LIGHT, "--dropout", "0.1", "--weight-drop", "0.1"], 5),
}


def run(*args: str) -> str:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, *args], cwd=REPO, check=True, capture_output=True, text=True).stdout
    print(f"  {' '.join(args[:5])} ... {time.monotonic() - t0:.0f} s", flush=True)
    return out


def score(ckpt: str, text: str, dynamic: bool) -> dict:
    return json.loads(run("-m", "charlm.evaluate", "--ckpt", ckpt, "--text", text, "--val-frac", "0.1", "--json",
                          *(["--dynamic"] if dynamic else [])))


def sample_stats(ckpt: str, train_text: str, temperature: float) -> dict:
    from charlm import novelty

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "samples.txt"
        run("sample.py", "--ckpt", ckpt, "--temperature", str(temperature), "--num-samples", "8", "--length", "500",
            "--seed", "1", "--output", str(out))
        samples = out.read_text(encoding="utf-8").split("\n\n")
    share, count = novelty.real_word_share(samples, train_text, novelty.load_word_list())
    return {"real_words": share, "words": count, "verbatim_20": novelty.verbatim_shares(samples, train_text, (20,))[20],
            "excerpt": samples[0][:200]}


def training_part(text: str) -> str:
    """The text (Alice by default) cleaned as the runs clean it, cut where their training part ends."""
    from charlm.config import make_run_config
    from charlm.dataset import prepare_corpus

    cfg = make_run_config("best", test_frac=0.1, val_frac=0.1)
    corpus = prepare_corpus(Path(text).read_text(encoding="utf-8"), cfg)
    return corpus.vocab.decode(corpus.train_tokens)


def compressors(text_path: str) -> dict:
    """nats/char of the test tail and the validation slice for each compressor: compressed(text
    before + slice) - compressed(text before), over the slice's chars."""
    import bz2
    import lzma
    import math

    import pyppmd

    from charlm.corpus import clean_text, read_text
    from charlm.dataset import held_out_splits

    text = clean_text(read_text(text_path))  # as the runs' config cleans it: lowercase, Gutenberg wrapper dropped
    test_start, val_start = held_out_splits(len(text), 0.1, 0.1)
    coders = {"ppmd-order10": lambda b: pyppmd.compress(b, max_order=10), "bzip2-9": lambda b: bz2.compress(b, 9),
              "xz-9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)}

    def cost(head: str, tail: str) -> dict:
        h, w = head.encode("utf-8"), (head + tail).encode("utf-8")
        return {name: 8 * (len(c(w)) - len(c(h))) / len(tail) * math.log(2) for name, c in coders.items()}
    return {"test": cost(text[:test_start], text[test_start:]), "val": cost(text[:val_start], text[val_start:test_start])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--define", action="append", default=[], metavar="NAME|MINUTES|FLAGS",
                   help="another run, e.g. 'ramp|5|--preset best --init-from base --body-lr-scale 0 --body-lr-ramp 300'")
    p.add_argument("--runs", nargs="+", default=["zero-shot", "finetune-5", "finetune-15", "best-15"])
    p.add_argument("--text", default=str(REPO.parent / "shared/data/wonderland.txt"))
    p.add_argument("--dynamic", action="store_true", help="also score the tail with dynamic evaluation")
    p.add_argument("--compressors", action="store_true", help="also PPMd, bzip2 and xz on the same split")
    p.add_argument("--work", default="/tmp/charlm-finetune-base")
    p.add_argument("--out", default=str(REPO / "bench/results/finetune-base.json"))
    args = p.parse_args()
    for definition in args.define:
        name, minutes, flags = definition.split("|")
        RUNS[name] = (flags.split(), float(minutes))
    unknown = [n for n in args.runs if n not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {sorted(RUNS)} or --define them")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    record["command"] = " ".join(sys.argv)
    train_text = training_part(args.text)
    if args.compressors:
        record["compressors"] = compressors(args.text)
        print("compressors, nats/char:", json.dumps(record["compressors"]), flush=True)
    for name in args.runs:
        spec = RUNS[name]
        ckpt = "base"
        entry: dict = {}
        if spec is not None:
            flags, minutes = spec
            ckpt = str(work / name)
            subprocess.run(["rm", "-rf", ckpt], check=True)
            run("train.py", "--text", args.text, *flags, *SPLIT, "--max-time", str(minutes), "--ckpt-dir", ckpt)
            metrics = [json.loads(line) for line in (Path(ckpt) / "metrics.jsonl").read_text().splitlines()]
            entry = {"flags": flags, "minutes": minutes, "epochs": len(metrics),
                     "best_val": min(m["val_loss"] for m in metrics if "val_loss" in m)}
        entry["test_tail"] = score(ckpt, args.text, args.dynamic and spec is not None)
        entry["samples"] = {str(t): sample_stats(ckpt, train_text, t) for t in (1.0, 0.8)}
        record["runs"][name] = entry
        out.write_text(json.dumps(record, indent=1))
        print(row(name, entry), flush=True)
    print(table(record))


def row(name: str, e: dict) -> str:
    tail, s1, s8 = e["test_tail"], e["samples"]["1.0"], e["samples"]["0.8"]
    dyn = tail.get("dynamic", {}).get("nats_per_char") if isinstance(tail.get("dynamic"), dict) else None
    return (f"| {name} | {e.get('minutes', 0):g} | {e.get('best_val', float('nan')):.4f} | {tail['nats_per_char']:.4f} | "
            f"{'' if dyn is None else f'{dyn:.4f}'} | {100 * s1['real_words']:.1f} % | {100 * s8['real_words']:.1f} % | "
            f"{100 * s8['verbatim_20']:.1f} % |")


def table(record: dict) -> str:
    head = ("| run | minutes | best val | test static | test dynamic | real words T 1.0 | real words T 0.8 | "
            "20-grams verbatim T 0.8 |\n|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + [row(n, e) for n, e in record["runs"].items()])


if __name__ == "__main__":
    main()
