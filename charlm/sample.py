"""The sample command line: sample.py / charlm-sample. Thin over charlm.sampling and charlm.beam.

One sample on a terminal or pipe is streamed: its chars are printed as they are produced.
Several samples, beams and --output are printed (or written) when they are done. Ctrl-C prints
what was generated so far and exits 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from charlm.cli import EXIT_INTERRUPTED, Parser, add_encoding_args, argv_text, guarded, prepare_process
from charlm.config import CONTEXT_MODES, PRECISIONS
from charlm.errors import CharlmError, CtrlC


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="sample.py", description="Generate text from a charlm checkpoint.",
               epilog="Examples:  python sample.py --ckpt checkpoints  |  python sample.py --ckpt checkpoints "
                      "--temperature 0.8 --top-p 0.9 --prime 'alice was'  |  python sample.py --ckpt checkpoints "
                      "--interactive")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint directory written by train.py")
    p.add_argument("--prime", type=argv_text,
                   help="text to start from (default: a random seed window stored in the checkpoint)")
    p.add_argument("--length", type=int, default=1000, help="chars to generate at most (default: %(default)s)")
    p.add_argument("--seed", type=int, help="seed for the seed-window choice and sampling (default: random)")
    p.add_argument("--num-samples", type=int, default=1,
                   help="independent samples drawn in one batch; with --beam, the top beams (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="the matmuls' precision, whatever the net was trained with (default: as trained)")
    p.add_argument("--context", choices=CONTEXT_MODES, default="stateful",
                   help="stateful: carry the LSTM state (fast); window: predict each char from the last seq_length "
                        "chars from a zero state, exactly as the tutorial (default: %(default)s)")
    pick = p.add_argument_group("choosing each char")
    pick.add_argument("--temperature", type=float, default=0.0,
                      help="0 takes the most likely char (the tutorial's argmax); >0 samples (default: %(default)s)")
    pick.add_argument("--top-k", type=int, help="sample only among the K most likely chars (default: all)")
    pick.add_argument("--top-p", type=float,
                      help="nucleus sampling: only among the smallest set of chars whose probability reaches P, "
                           "after --top-k (default: all)")
    pick.add_argument("--repetition-penalty", type=float, default=1.0,
                      help="CTRL-style: divide positive (multiply negative) logits of chars among the last "
                           "--penalty-window generated ones by R, e.g. 1.3 (default: %(default)s, off)")
    pick.add_argument("--penalty-window", type=int, default=64, help="see --repetition-penalty (default: %(default)s)")
    pick.add_argument("--no-repeat-ngram", type=int, metavar="N",
                      help="never emit a char that completes an N-char string already in the prime or the sample "
                           "(default: off)")
    pick.add_argument("--beam", type=int, metavar="K",
                      help="beam search with K beams instead of sampling: the most likely continuation "
                           "(default: off)")
    out = p.add_argument_group("output")
    out.add_argument("--stop", action="append", default=[], type=argv_text, metavar="STRING",
                     help="end a sample at the first occurrence of STRING (repeatable; --length stays the cap)")
    out.add_argument("--keep-stop", action="store_true", help="keep the stop string in the sample (default: drop it)")
    out.add_argument("--output", metavar="FILE",
                     help="write the samples to FILE (UTF-8, a blank line between samples) instead of printing them")
    out.add_argument("--interactive", action="store_true",
                     help="a prompt loop: type primes, change settings with :t 0.8 and the like (:h lists them)")
    out.add_argument("--novelty", action="store_true",
                     help="then print the share of the sample's 10-, 20- and 40-char substrings found verbatim in "
                          "the training text (read from the path the checkpoint records, or --text), and the "
                          "share of its words found in that text or in /usr/share/dict/words")
    out.add_argument("--text", nargs="+", metavar="PATH", help="the training text for --novelty, if it has moved")
    add_encoding_args(out)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    prepare_process()
    args = parser().parse_args(argv)

    def run() -> int:
        import secrets

        from charlm.checkpoint import restore
        from charlm.config import SamplingSettings

        settings = SamplingSettings(args.temperature, args.top_k, args.top_p, args.repetition_penalty,
                                    args.penalty_window, args.no_repeat_ngram)
        state, cfg, vocab, meta = restore(args.ckpt)
        seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
        if args.interactive:
            from charlm import interactive

            return interactive.run(state.params, cfg, vocab, interactive.Session(settings, args.length, seed),
                                   context=args.context, precision=args.precision)
        prime = args.prime if args.prime is not None else meta["seeds"][seed % len(meta["seeds"])]
        texts, interrupted = _produce(state.params, cfg, vocab, prime, settings, seed, args)
        if args.novelty and texts:
            from charlm import novelty

            train = novelty.training_text(meta, cfg, args.text, args.encoding, args.errors)
            print(novelty.novelty_line(novelty.verbatim_shares(texts, train)))
            word_list = novelty.load_word_list()
            print(novelty.real_words_line(*novelty.real_word_share(texts, train, word_list),
                                          novelty.WORD_LIST if word_list is not None else None))
        return EXIT_INTERRUPTED if interrupted else 0

    return guarded("sample.py", run)


def _produce(params, cfg, vocab, prime, settings, seed, args) -> tuple[list[str], bool]:
    """Samples (or beams) as the flags ask, shown as they ask. Returns (texts, interrupted)."""
    from charlm.interactive import write_stream

    sink = None
    if args.output is not None:
        try:  # opened first, so a bad path fails before any sampling
            sink = open(args.output, "w", encoding="utf-8")
        except OSError as e:
            raise CharlmError(f"cannot write --output {args.output}: {e.strerror}") from None
    options = dict(length=args.length, num_samples=args.num_samples, context=args.context, stop=args.stop,
                   keep_stop=args.keep_stop, precision=args.precision)
    labels = None
    if args.beam:
        from charlm.beam import beam_generate

        beams = beam_generate(params, cfg, vocab, prime, settings, beams=args.beam, **options)
        texts, interrupted = [t for t, _ in beams], False
        labels = [f"beam {i + 1}/{args.beam}, {score:.4f} nats/char" for i, (_, score) in enumerate(beams)]
    else:
        from charlm.sampling import stream

        pieces = stream(params, cfg, vocab, prime, settings, seed=seed, **options)
        if sink is None and args.num_samples == 1:
            print(f'Seed: "{prime}"', flush=True)
            text, interrupted = write_stream((p[0] for p in pieces), sys.stdout)
            print("\n\nDone." if not interrupted else "\n[interrupted]")
            return [text], interrupted
        texts = [""] * args.num_samples
        with CtrlC() as ctrl_c:
            for chunk in pieces:
                texts = [t + p for t, p in zip(texts, chunk)]
                if ctrl_c.signal is not None:
                    break
        interrupted = ctrl_c.signal is not None
    if sink is not None:
        with sink:
            sink.write("\n\n".join(texts) + "\n")
        print(f"Wrote {len(texts)} sample(s) to {args.output}" + (" (interrupted)" if interrupted else ""))
        return texts, interrupted
    print(f'Seed: "{prime}"')
    for i, text in enumerate(texts):
        if len(texts) > 1 or labels:
            print(f"--- {labels[i] if labels else f'sample {i + 1}/{len(texts)}'} ---")
        print(text)
    print("\nDone." if not interrupted else "\n[interrupted]")
    return texts, interrupted


def entry() -> None:
    sys.exit(main())
