"""The evaluate command line: `python -m charlm.evaluate` / charlm-evaluate.

A thin wrapper over `charlm.scoring.evaluate_checkpoint`; the shared CLI plumbing is charlm.cli.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from charlm.cli import Parser, add_encoding_args, guarded, prepare_process
from charlm.config import DYNAMIC_METHODS, DynamicSettings


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m charlm.evaluate", description="Score a text with a checkpoint: nats/char, "
                "bits/char and perplexity, each char predicted from its preceding context.")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint directory written by train.py")
    p.add_argument("--text", nargs="+", metavar="PATH",
                   help="text files and directories to score (UTF-8 unless --encoding), joined and cleaned as in "
                        "training (default: the checkpoint's training text, if its files are still there)")
    p.add_argument("--glob", metavar="PATTERN", help="with directories in --text, only the files whose name matches")
    add_encoding_args(p)
    p.add_argument("--val-frac", type=float, default=0.0,
                   help="score only this contiguous tail, after warming up on the text before it "
                        "(default: %(default)s, the whole text)")
    p.add_argument("--metric", choices=("stream", "last-window"), default="stream",
                   help="stream: state carried through the text; last-window: the tutorial's metric, the char "
                        "after each seq_length window from a zero state (default: %(default)s)")
    dyn = p.add_argument_group("dynamic evaluation (Krause et al. 2018): adapt to the text while scoring it")
    dyn.add_argument("--dynamic", action="store_true",
                     help="also report dynamic evaluation (stream metric only; default: off)")
    defaults = DynamicSettings()
    dyn.add_argument("--dynamic-method", choices=DYNAMIC_METHODS, default=defaults.method,
                     help="rms: Krause's RMS-normalised steps, statistics from training text; sgd: plain steps "
                          "(default: %(default)s)")
    dyn.add_argument("--dynamic-lr", type=float, default=defaults.lr,
                     help="step size (default: %(default)s, chosen on Alice's validation slice; for sgd try 3e-2)")
    dyn.add_argument("--dynamic-decay", type=float, default=defaults.decay,
                     help="pull toward the trained weights per update (default: %(default)s)")
    dyn.add_argument("--dynamic-segment", type=int, default=defaults.segment,
                     help="chars scored between two updates (default: %(default)s)")
    dyn.add_argument("--adapt-chars", type=int, default=defaults.adapt_chars,
                     help="adapt first on this many chars before the scored tail, unscored (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table (default: off)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    prepare_process()
    args = parser().parse_args(argv)

    def run() -> None:
        import json

        from charlm.scoring import evaluate_checkpoint

        dynamic = DynamicSettings(args.dynamic_method, args.dynamic_lr, args.dynamic_decay, args.dynamic_segment,
                                  args.adapt_chars) if args.dynamic else None
        report = evaluate_checkpoint(args.ckpt, args.text, val_frac=args.val_frac, metric=args.metric,
                                     dynamic=dynamic, encoding=args.encoding, errors=args.errors, glob=args.glob)
        if args.json:
            print(json.dumps(report))
            return
        print(f"Text: {report['text']} ({report['scored']})")
        rows = [("static", report)] + ([("dynamic", report["dynamic"])] if "dynamic" in report else [])
        for name, r in rows:
            print(f"{name:8s} {report['metric']:12s} {r['nats_per_char']:.4f} nats/char  "
                  f"{r['bits_per_char']:.4f} bits/char  perplexity {r['perplexity']:.3f}  over {r['chars']} chars")
        if "dynamic_settings" in report:
            ds = report["dynamic_settings"]
            print(f"dynamic: {ds['method']}, lr {ds['lr']:g}, decay {ds['decay']:g}, segment {ds['segment']}, "
                  f"adapted first on the {ds['adapted_chars']} chars before the scored ones")

    return guarded("charlm.evaluate", run)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
