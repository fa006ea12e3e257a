"""charlm-inspect (`python -m charlm.inspect`): look inside a model on a text.

    charlm-inspect --ckpt DIR --text FILE --html report.html --json report.json
    charlm-inspect --ckpt DIR --text FILE --units      # the top units for each ready hypothesis

`inspection` builds one JSON-ready report from charlm.probe's arrays; the HTML report and
charlm-serve's Inspect view draw it with the same page (charlm/web/inspect.html), which the
report embeds, so it opens from disk with nothing loaded from the network.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from charlm.cli import Parser, add_encoding_args, guarded, prepare_process, web_page, write_output
from charlm.errors import CharlmError

MAX_CHARS = 20_000   # the command line's limit (a 20,000-char report is about 3 MB of HTML)
TOP_UNITS = 3        # units kept per hypothesis (with their activations, to colour the text)
SPAN_UNITS = 10      # units ranked for a selected span


def encode_text(text: str, vocab, cfg, limit: int, *, whole_file: bool = False) -> np.ndarray:
    """The text as the checkpoint's training cleaned it, as ids; CharlmError when it is empty, over
    `limit` chars or has chars outside the vocabulary. A `whole_file` also loses its Gutenberg
    header and licence, as a training file does, and is cut to its first `limit` chars."""
    from charlm.corpus import clean_text
    from charlm.sampling import encode_prime

    if whole_file:  # cleaned here to cut it; encode_prime's cleaning then changes nothing
        d = cfg.data
        text = clean_text(text, lowercase=d.lowercase, strip_punctuation=d.strip_punctuation)[:limit]
    ids = encode_prime(text, vocab, cfg, what="text")
    if len(ids) < 2:
        raise CharlmError("the text needs at least 2 chars: the first has no past to be scored from")
    if len(ids) > limit:
        raise CharlmError(f"the text is {len(ids)} chars; the limit is {limit}")
    return ids


def _rounded(a, digits: int = 3) -> list:
    return [None if not np.isfinite(v) else round(float(v), digits) for v in np.asarray(a, np.float64)]


def inspection(params, cfg, vocab, ids: np.ndarray, *, span: tuple[int, int] | None = None,
               units: Sequence[str] = (), bucket: int | None = None) -> dict:
    """The report on one text: per char its surprisal and the model's top guesses; for each ready
    hypothesis (charlm.probe.hypotheses) its best units; the units that track `span` (chars
    start..end-1), when given; the gate saturation; and the activations of every unit it names
    plus `units` (CharlmError for an unknown name). `bucket`: as charlm.probe.trace's."""
    from charlm import probe

    tr = probe.trace(params, cfg.model, ids, bucket=bucket or probe.BUCKET)
    text = vocab.decode(ids)
    names, acts = tr.units()
    index = {n: i for i, n in enumerate(names)}
    unknown = [u for u in units if u not in index]
    if unknown:
        raise CharlmError(f"no unit {unknown[0]!r}: units are named L<layer>.h<j> (and L<layer>.c<j> for an LSTM), "
                          f"here {names[0]} to {names[-1]}")

    def ranked(scores) -> list[dict]:
        return [{"unit": names[s.unit], "auc": round(s.auc, 4), "effect": round(s.effect, 3)} for s in scores]

    hypotheses = [{"name": h.name, "chars": int(h.chosen[h.among].sum() if h.among is not None else h.chosen.sum()),
                   "top": ranked(probe.rank_units(acts, h.chosen, h.among, top=TOP_UNITS))}
                  for h in probe.hypotheses(text)]
    report = {
        "model": {"cell": cfg.model.cell, "layers": cfg.model.layers, "hidden": cfg.model.hidden,
                  "units": len(names)},
        "chars": list(text),
        "bits_per_char": round(tr.bits_per_char, 4),
        "surprisal_bits": _rounded(tr.surprisal_bits),
        "guesses": [[[vocab.chars[int(i)], round(float(p), 4)] for i, p in zip(row_ids, row_probs)]
                    for row_ids, row_probs in zip(tr.guess_ids, tr.guess_probs)],
        "hypotheses": hypotheses,
        "saturation": [{"layer": layer, "gates": {g: {k: _rounded(v, 3) for k, v in shares.items()}
                                                   for g, shares in gates.items()}}
                       for layer, gates in enumerate(probe.saturation(tr, cfg.model.cell), 1)],
    }
    shown = {u["unit"] for h in hypotheses for u in h["top"]} | set(units)
    if span is not None:
        start, end = span
        if not 0 <= start < end <= len(ids) or end - start >= len(ids):
            raise CharlmError(f"the span must be part of the text (0 <= start < end <= {len(ids)}, not all of it); "
                              f"got {start}..{end}")
        chosen = np.zeros(len(ids), bool)
        chosen[start:end] = True
        report["span"] = {"start": start, "end": end, "top": ranked(probe.rank_units(acts, chosen, top=SPAN_UNITS))}
        shown |= {u["unit"] for u in report["span"]["top"]}
    report["activations"] = {u: _rounded(acts[:, index[u]]) for u in sorted(shown, key=index.get)}
    return report


def page(report: dict | None = None) -> str:
    """The Inspect page; with a report embedded it is a self-contained file, else it asks the server."""
    return web_page("inspect.html", "REPORT", report)


def units_table(report: dict) -> str:
    rows = [f"{'hypothesis':30s} {'chars':>6s}  best units (AUC, Cohen's d)"]
    for h in report["hypotheses"]:
        best = ", ".join(f"{u['unit']} ({u['auc']:.3f}, {u['effect']:+.2f})" for u in h["top"])
        rows.append(f"{h['name']:30s} {h['chars']:6d}  {best}")
    return "\n".join(rows)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="charlm-inspect", description="Look inside a model on a text: each char's surprisal and the "
                "model's guesses, the units that track quotes, lines and words, and how often its gates saturate.")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint directory written by train.py, or base")
    p.add_argument("--text", required=True, metavar="FILE",
                   help="the text to inspect, cleaned as in training (Gutenberg header and licence dropped)")
    p.add_argument("--limit", type=int, default=5000,
                   help=f"use at most this many chars from the text's start (default: %(default)s; at most {MAX_CHARS})")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report here")
    p.add_argument("--json", metavar="FILE", help="write the report's numbers here as JSON")
    p.add_argument("--units", action="store_true", help="print the best units for each ready hypothesis")
    add_encoding_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    prepare_process()
    args = parser().parse_args(argv)
    if not 2 <= args.limit <= MAX_CHARS:
        parser().error(f"--limit must be between 2 and {MAX_CHARS}")

    def run() -> None:
        from charlm.checkpoint import restore
        from charlm.corpus import read_text

        state, cfg, vocab, _ = restore(args.ckpt)
        text = read_text(args.text, args.encoding, args.errors)
        report = inspection(state.params, cfg, vocab, encode_text(text, vocab, cfg, args.limit, whole_file=True))
        print(f"{len(report['chars'])} chars, {report['bits_per_char']:.4f} bits/char "
              f"({cfg.model.layers}x{cfg.model.hidden} {cfg.model.cell.upper()})")
        if args.units or not (args.html or args.json):
            print(units_table(report))
        for path, content in ((args.html, lambda: page(report)), (args.json, lambda: json.dumps(report))):
            if path:
                write_output(path, content())
                print(f"Wrote {path}")

    return guarded("charlm-inspect", run)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
