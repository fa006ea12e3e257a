"""Command lines: the shared plumbing (one-line errors, exit codes, UTF-8 output) and train.py.

Argument parsing and error reporting only; the work is in charlm's library modules.
Bad input of any kind ends with one line on stderr and exit code 2, never a traceback.
JAX is imported only after the arguments are parsed, so --help and flag errors are instant.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence

from charlm.config import (CELLS, DEFAULT_PRESET, FINETUNE_PRESET, INPUT_ENCODINGS, LR_SCHEDULES, OBJECTIVES,
                           PRECISIONS, PRESETS, WINDOWINGS, make_run_config)
from charlm.corpus import ERRORS
from charlm.errors import CharlmError, Interrupted

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump)."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def add_encoding_args(group) -> None:
    group.add_argument("--encoding", default="utf-8", metavar="ENC",
                       help="encoding of the text file, any Python codec name: latin-1, cp1252, utf-16 "
                            "(default: %(default)s; a leading BOM is dropped)")
    group.add_argument("--errors", default="strict", choices=ERRORS,
                       help="undecodable bytes: strict refuses the file, replace puts U+FFFD in their place, "
                            "ignore drops them (default: %(default)s)")


def argv_text(value: str) -> str:
    """A text argument as UTF-8 whatever the locale: under a C/ASCII locale Python keeps the
    bytes it cannot decode as surrogate escapes, which name no real char."""
    if not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    try:
        return os.fsencode(value).decode("utf-8")
    except UnicodeDecodeError:
        return value


def _preset_default(section: str, name: str) -> str:
    value = getattr(getattr(make_run_config(DEFAULT_PRESET), section), name)
    return f"(default: {value}, from --preset {DEFAULT_PRESET})"


def web_page(name: str, placeholder: str | None = None, data=None) -> str:
    """A page of charlm/web; with a placeholder, its `/*PLACEHOLDER*/null` becomes `data` as JSON
    (with "</" escaped, so no string in it can end the page's script)."""
    import json
    from importlib import resources

    html = resources.files("charlm").joinpath(f"web/{name}").read_text(encoding="utf-8")
    if placeholder is None or data is None:
        return html
    return html.replace(f"/*{placeholder}*/null", json.dumps(data, separators=(",", ":")).replace("</", "<\\/"), 1)


def write_output(path: str, text: str) -> None:
    """Writes a file the user asked for, or says in one line why it cannot."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise CharlmError(f"cannot write {path}: {e.strerror}") from None


def train_parser() -> argparse.ArgumentParser:
    p = Parser(prog="train.py", description="Train a char-level LSTM on a book and keep the best checkpoint.",
                epilog="Examples:  python train.py  |  python train.py --layers 2  |  "
                       "python train.py --text mybook.txt --epochs 5")
    src = p.add_argument_group("text")
    src.add_argument("--text", nargs="+", metavar="PATH",
                     help="text files and directories to train on, UTF-8 unless --encoding says otherwise; a "
                          "directory gives every file under it (sorted by path, hidden names skipped), and "
                          "several files are joined with a blank line (default: ./wonderland.txt if present, "
                          "else the tutorial's Alice, which ships with charlm)")
    src.add_argument("--glob", metavar="PATTERN",
                     help="with directories in --text, only the files whose name matches, e.g. '*.py' (default: all)")
    src.add_argument("--gutenberg", type=int, metavar="ID",
                     help="download Project Gutenberg book ID once into the user cache and train on it "
                          "(default: none)")
    add_encoding_args(src)
    src.add_argument("--no-lowercase", dest="lowercase", action="store_false", default=None,
                     help="keep case (default: lowercase, as the tutorial)")
    src.add_argument("--no-strip", dest="strip", action="store_false", default=None,
                     help="use the text exactly as given (default: drop a Gutenberg header/footer)")
    src.add_argument("--strip-punctuation", action="store_true", default=None,
                     help="remove punctuation from the text (tutorial extension 2; default: keep it)")
    src.add_argument("--val-frac", type=float, help=f"validate on this share of the text, the contiguous slice before "
                     f"the test tail (or the tail itself); the best checkpoint and early stopping then go by "
                     f"val loss {_preset_default('data', 'val_frac')}")
    src.add_argument("--test-frac", type=float, help=f"hold out the contiguous last share of the text from training, "
                     f"validation and tuning; score it afterwards with `python -m charlm.evaluate --ckpt DIR "
                     f"--val-frac F` {_preset_default('data', 'test_frac')}")
    win = p.add_argument_group("windows and objective")
    win.add_argument("--seq-length", type=int, help=f"chars per window {_preset_default('data', 'seq_length')}")
    win.add_argument("--stride", type=int,
                     help="step between window starts (default: 1 for --objective last, seq_length for all)")
    win.add_argument("--objective", choices=OBJECTIVES,
                     help=f"last: score the char after each window (tutorial); all: the next char at every "
                          f"position (dense targets) {_preset_default('data', 'objective')}")
    win.add_argument("--stateful", action="store_true", default=None,
                     help="train on batch-size contiguous streams, carrying the LSTM state from batch to batch "
                          "(tutorial extension 10; needs --objective all; default: off)")
    win.add_argument("--windowing", choices=WINDOWINGS,
                     help=f"sliding windows, or one padded sentence per window (tutorial extension 4; needs "
                          f"--objective all) {_preset_default('data', 'windowing')}")
    net = p.add_argument_group("model")
    net.add_argument("--preset", choices=sorted(PRESETS),
                     help="seed-small: the tutorial's 1x256 net, batch 128, 20 epochs; seed-big: its 2x256 net, "
                          "batch 64, 50 epochs; fast: a good held-out loss in 4 CPU minutes; best: the best in 15 "
                          "from scratch; finetune: for --init-from base (BENCHMARKS.md). Explicit flags override "
                          f"it (default: {DEFAULT_PRESET}; finetune with --init-from base)")
    net.add_argument("--layers", type=int, help=f"stacked LSTM layers {_preset_default('model', 'layers')}")
    net.add_argument("--hidden", type=int, help=f"LSTM units per layer {_preset_default('model', 'hidden')}")
    net.add_argument("--dropout", type=float, help=f"dropout after each LSTM layer {_preset_default('model', 'dropout')}")
    net.add_argument("--input-encoding", choices=INPUT_ENCODINGS,
                     help=f"scaled: id/vocab as one float (tutorial); onehot; embed {_preset_default('model', 'input_encoding')}")
    net.add_argument("--embed-dim", type=int, help=f"embedding width for --input-encoding embed {_preset_default('model', 'embed_dim')}")
    net.add_argument("--cell", choices=CELLS, help=f"recurrent cell {_preset_default('model', 'cell')}")
    net.add_argument("--precision", choices=PRECISIONS,
                     help=f"bfloat16: recurrent matmuls in bf16 with float32 state and loss (faster on "
                          f"CPUs with AVX512-BF16 and on GPUs) {_preset_default('model', 'precision')}")
    net.add_argument("--input-dropout", type=float,
                     help=f"dropout on the inputs (tutorial extension 6) {_preset_default('model', 'input_dropout')}")
    reg = p.add_argument_group("regularisation (for when the val loss rises while the train loss falls)")
    reg.add_argument("--variational", action=argparse.BooleanOptionalAction, default=None,
                     help=f"one --dropout/--input-dropout mask per sequence, the same at every step "
                          f"(Gal & Ghahramani) {_preset_default('model', 'variational')}")
    reg.add_argument("--weight-drop", type=float,
                     help=f"DropConnect on each recurrent kernel, one mask per batch (AWD-LSTM) "
                          f"{_preset_default('model', 'weight_drop')}")
    reg.add_argument("--embed-dropout", type=float,
                     help=f"drop whole chars from the embed/onehot input, one mask per batch (AWD-LSTM) "
                          f"{_preset_default('model', 'embed_dropout')}")
    reg.add_argument("--weight-decay", type=float,
                     help=f"decoupled AdamW weight decay of the kernels (not biases or embedding) "
                          f"{_preset_default('train', 'weight_decay')}")
    reg.add_argument("--ema-decay", type=float,
                     help=f"average the weights (e.g. 0.999); validation and the best checkpoint use the "
                          f"average, --resume the raw weights; 0: off {_preset_default('train', 'ema_decay')}")
    reg.add_argument("--patience", type=int,
                     help="early stopping: end after this many epochs without a better val loss (default: off)")
    opt = p.add_argument_group("training")
    opt.add_argument("--epochs", type=int, help=f"passes over the windows {_preset_default('train', 'epochs')}")
    opt.add_argument("--batch-size", type=int, help=f"windows per step {_preset_default('train', 'batch_size')}")
    opt.add_argument("--lr", dest="learning_rate", type=float,
                     help=f"Adam learning rate {_preset_default('train', 'learning_rate')}")
    opt.add_argument("--clip-norm", type=float, help="clip gradients to this global norm (default: no clipping)")
    opt.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                     help=f"cosine decays to 0 at the last epoch; exponential to --lr-decay x lr "
                          f"{_preset_default('train', 'lr_schedule')}")
    opt.add_argument("--warmup-steps", type=int, help=f"linear lr warm-up steps {_preset_default('train', 'warmup_steps')}")
    opt.add_argument("--lr-decay", type=float,
                     help=f"final lr factor of the exponential schedule {_preset_default('train', 'lr_decay')}")
    opt.add_argument("--max-time", type=float, metavar="MINUTES",
                     help="stop cleanly after this many minutes of training, with a final val pass and the "
                          "usual best-checkpoint logic (default: no limit)")
    opt.add_argument("--seed", type=int, help=f"seed for init, dropout and shuffling {_preset_default('train', 'seed')}")
    opt.add_argument("--ckpt-dir", default="checkpoints", help="where the best checkpoint goes (default: %(default)s)")
    opt.add_argument("--save-every", type=float, default=5.0, metavar="MINUTES",
                     help="also write the last checkpoint this often within an epoch, so a crash loses at most "
                          "this much training (default: %(default)s; epoch ends and Ctrl-C always save it)")
    opt.add_argument("--data-parallel", action=argparse.BooleanOptionalAction, default=None,
                     help="split each batch over all local devices (jax.sharding); default: on when "
                          "several devices are visible and --batch-size divides evenly")
    opt.add_argument("--init-from", metavar="CKPT",
                     help="start from another checkpoint's weights (fine-tuning): a fresh optimizer and epoch "
                          "count, the new text's extra chars get fresh rows; the net's shape flags default to "
                          "the checkpoint's. `base` is the model of English prose that ships with charlm "
                          "(default: a fresh init)")
    opt.add_argument("--body-lr-scale", type=float, metavar="F",
                     help="fine-tuning: every layer but the output one starts at F x the lr, rising to 1 x over "
                          "--body-lr-ramp steps (ULMFiT; 0 freezes it at first) "
                          f"{_preset_default('train', 'body_lr_scale')}")
    opt.add_argument("--body-lr-ramp", type=int, metavar="STEPS",
                     help=f"see --body-lr-scale {_preset_default('train', 'body_lr_ramp')}")
    opt.add_argument("--resume", action="store_true",
                     help="continue exactly where the run in --ckpt-dir stopped (its last checkpoint: same batch, "
                          "data order and dropout keys), or after its best epoch if there is no last one "
                          "(default: off; a directory that already holds a checkpoint is refused without it)")
    hosts = p.add_argument_group("several hosts (one process per host, each with the same command but its "
                                 "--process-id; each batch is split over every device of every process)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT",
                       help="process 0's address, which every process connects to (env JAX_COORDINATOR_ADDRESS; "
                            "default: one process)")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="how many processes (env JAX_NUM_PROCESSES)")
    hosts.add_argument("--process-id", type=int, metavar="I",
                       help="this process's index, 0 to N-1; process 0 logs and writes the metrics file "
                            "(env JAX_PROCESS_ID)")
    return p


_NOT_CONFIG = ("text", "glob", "init_from", "gutenberg", "encoding", "errors", "preset", "ckpt_dir", "resume", "data_parallel",
               "save_every", "coordinator", "num_processes", "process_id")


def _is_base(init_from: str | None) -> bool:
    from charlm.checkpoint import BASE_DIR, resolve

    return init_from is not None and resolve(init_from).resolve() == BASE_DIR.resolve()


def run_config_from_args(args: argparse.Namespace):
    """The preset, overridden by every flag the user gave (flags left unset are None)."""
    preset = args.preset or (FINETUNE_PRESET if _is_base(getattr(args, "init_from", None)) else DEFAULT_PRESET)
    return make_run_config(preset, **{k: v for k, v in vars(args).items() if k not in _NOT_CONFIG})


def train_main(argv: Sequence[str] | None = None) -> int:
    prepare_process()
    args = train_parser().parse_args(argv)

    def run() -> None:
        from charlm import distributed, host

        host.tune_allocator()  # glibc for XLA:CPU's train steps, before JAX's threads start (charlm.host)
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before any device work
        if args.init_from is not None:
            from charlm.checkpoint import config_from_meta, read_meta
            from charlm.finetune import SHAPE_FIELDS

            old = config_from_meta(read_meta(args.init_from))[0].model
            for name in SHAPE_FIELDS:  # the net's shape comes from the checkpoint unless a flag says otherwise
                if getattr(args, name) is None:
                    setattr(args, name, getattr(old, name))
        cfg = run_config_from_args(args)
        from charlm.corpus import iter_text, resolve_corpus

        paths = resolve_corpus(args.text, args.gutenberg, args.glob)
        for path in paths:  # each file's first chunk, so a missing, binary or misencoded file fails before JAX loads
            next(iter_text(path, args.encoding, args.errors), None)
        if not args.save_every > 0:
            raise CharlmError(f"--save-every must be a positive number of minutes, got {args.save_every:g}")
        from charlm.trainer import TextFiles, train

        result = train(TextFiles(tuple(paths), args.encoding, args.errors), cfg, args.ckpt_dir, resume=args.resume,
                       data_parallel=args.data_parallel, save_every_minutes=args.save_every,
                       init_from=args.init_from)
        if result.best_path is not None and distributed.is_primary():
            print(f"Best checkpoint: {result.best_path} (loss {result.best_loss:.4f}); "
                  f"sample with: python sample.py --ckpt {args.ckpt_dir}")
        if result.interrupted is not None:  # the shell's convention: 128 + the signal (130 SIGINT, 143 SIGTERM)
            return 128 + result.interrupted
        return 0

    return guarded("train.py", run)


def _ignore_orbax_teardown(unraisable, previous: Callable) -> None:
    # A failed orbax restore closes its event loop while other tensorstore reads are still in
    # flight: their callbacks then raise "Event loop is closed" in tensorstore's threads, and the
    # abandoned orbax coroutines report their own errors when collected. Python would print
    # each as a traceback after the one-line error.
    e, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
    closed_loop = isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
    if not (closed_loop or (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename)):
        previous(unraisable)


def prepare_process() -> None:
    """UTF-8 output whatever the terminal's locale (before argparse, whose messages quote the user),
    and no stray tracebacks or warnings from orbax's threads."""
    import warnings

    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="replace")
    # A failed orbax restore leaves its reads' coroutines unawaited; when they are collected Python
    # warns twice more after the one-line error (seen once in the fault tests). charlm runs no
    # coroutines of its own, so the warning can only be a library's teardown.
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)
    if getattr(sys.unraisablehook, "func", None) is not _ignore_orbax_teardown:
        sys.unraisablehook = functools.partial(_ignore_orbax_teardown, previous=sys.unraisablehook)


def guarded(prog: str, run: Callable[[], int | None]) -> int:
    """Runs a CLI body, turning bad input into one stderr line and an exit code."""
    try:
        return run() or 0
    except CharlmError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:  # Ctrl-C outside training, or a second stop signal during it
        print(f"{prog}: interrupted", file=sys.stderr)
        return 128 + e.signum if isinstance(e, Interrupted) else EXIT_INTERRUPTED


def train_entry() -> None:
    sys.exit(train_main())
