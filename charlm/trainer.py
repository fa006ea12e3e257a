"""The epoch loop: step, report, keep the best checkpoint and the `last` one to resume from.

The text is cleaned, encoded and split by `charlm.dataset`; resuming is `charlm.resume`.

`train(raw_text, cfg, run_dir)` is what `train.py` calls and what a notebook calls.
Metrics are pulled from the device only when shown (every few steps and at epoch end).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from charlm import checkpoint, distributed, host
from charlm.callbacks import Diverged, EarlyStopping, KeepBest, LastCheckpoint, TimeBudget
from charlm.config import RunConfig
from charlm.corpus import describe_files
from charlm.data import Vocab, seed_windows
from charlm.dataset import Corpus, TextFiles, epoch_batches, load_corpus, prepare_corpus, summary_lines, training_windows
from charlm.errors import CharlmError, StopRequests
from charlm.finetune import check_compatible, transplant
from charlm.scoring import tail_nll
from charlm.model import zero_carry
from charlm.resume import Position, resume_point
from charlm.training import TrainState, create_train_state, eval_params, make_optimizer, stateful_train_step, train_step

NUM_SEEDS = 16          # seed windows stored in each checkpoint for sample.py
PROGRESS_EVERY = 20     # steps between progress-bar refreshes (each one syncs with the device)
DEFAULT_SAVE_EVERY_MINUTES = 5.0  # the `last` checkpoint within an epoch: the most a crash can lose


def train_metric(cfg: RunConfig) -> str:
    """Names the training loss, so no printed number is ambiguous."""
    return "train loss (last-char)" if cfg.data.objective == "last" else "train loss (all-chars)"


def val_metric(cfg: RunConfig) -> str:
    """Each model is validated in the regime it was trained for: the tutorial's objective on
    the char after each window, dense objectives on the whole tail read as one stream."""
    return "val loss (last-char)" if cfg.data.objective == "last" else "val loss (stream)"


def validation_nll(state: TrainState, cfg: RunConfig, corpus: Corpus) -> np.ndarray:
    """One NLL (nats) per val char, each predicted from text that precedes it."""
    metric = "last-window" if cfg.data.objective == "last" else "stream"
    params = distributed.local_copy(eval_params(state))  # each process scores the tail on its own
    return tail_nll(params, cfg.model, corpus.tokens, corpus.split, cfg.data.seq_length, metric)


@dataclass(frozen=True)
class EpochStats:
    loss: float      # mean train loss over the scored chars
    steps: int       # steps run in this call
    chars: int       # input chars processed in this call
    stopped: bool    # the time budget ran out before the epoch ended
    signal: int | None = None  # a stop signal arrived; the epoch is unfinished


def _loss_diverged(state: TrainState) -> Diverged:
    return Diverged(f"step {int(state.step)} (the loss became NaN or inf)")


def run_epoch(state: TrainState, batches: Iterator[dict], cfg: RunConfig, dropout_rng: jax.Array, steps: int,
              desc: str, progress: bool | None, deadline: float = math.inf, *, position: Position | None = None,
              carry=None, stop: StopRequests | None = None, place: Callable = lambda tree: tree,
              save_every: float = math.inf, save: Callable | None = None):
    """One pass over `batches`, stopping early after the step that crosses `deadline` or when `stop` has
    a signal. Starts from `position`'s running sums and the stateful `carry`, if given. Every
    `save_every` seconds it calls `save(state, position, carry)` between steps.

    Returns (state, stats, position after the last step run, carry). The running loss is checked for
    NaN/inf every PROGRESS_EVERY steps; a non-finite one raises Diverged before anything is saved.
    """
    position = position or Position(epoch=0)
    objective = cfg.data.objective
    if cfg.data.stateful and carry is None:
        carry = place(zero_carry(cfg.model, cfg.train.batch_size))
    t0 = time.perf_counter()
    total, count = jnp.asarray(position.loss_sum, jnp.float32), jnp.asarray(position.count, jnp.float32)
    chars = 0
    bar = tqdm(total=steps, initial=position.batch, desc=desc, unit="step", file=sys.stderr, leave=False,
               disable=(None if progress is None else not progress) if distributed.is_primary() else True)
    stopped, i = False, -1
    last_save = time.monotonic()
    multi = distributed.multi_process()

    def where(done: int) -> Position:
        return dataclasses.replace(position, batch=position.batch + done, loss_sum=float(total), count=float(count),
                                   chars=position.chars + chars)

    for i, batch in enumerate(batches):
        batch = place(batch)
        if cfg.data.stateful:
            state, metrics, carry = stateful_train_step(state, batch, dropout_rng, carry, objective=objective)
        else:
            state, metrics = train_step(state, batch, dropout_rng, objective=objective)
        # Accumulate on the device; pulling a value would sync every step.
        total, count = total + metrics["loss"] * metrics["count"], count + metrics["count"]
        chars += batch["inputs"].size
        bar.update(1)
        if (i + 1) % PROGRESS_EVERY == 0:
            running = float(total / jnp.maximum(count, 1.0))
            if not math.isfinite(running):
                raise _loss_diverged(state)
            if not bar.disable:
                bar.set_postfix(loss=f"{running:.4f}", chars_s=f"{chars / (time.perf_counter() - t0):,.0f}")
        if multi and (i + 1) % PROGRESS_EVERY:
            continue  # several processes decide together, every PROGRESS_EVERY steps
        signum, late, save_due = distributed.agreed(
            (stop.signal or 0) if stop is not None else 0, time.monotonic() >= deadline,
            save is not None and time.monotonic() - last_save >= save_every and i + 1 < steps - position.batch)
        if signum:
            break
        if late:
            stopped = True
            break
        if save_due:
            if not math.isfinite(float(total)):  # never save a diverged state
                raise _loss_diverged(state)
            save(state, where(i + 1), carry)
            last_save = time.monotonic()
    bar.close()
    loss = float(total / jnp.maximum(count, 1.0))
    if not math.isfinite(loss):
        raise _loss_diverged(state)
    after = where(i + 1)
    signum = distributed.agreed((stop.signal or 0) if stop is not None else 0)[0] or None
    return state, EpochStats(loss, i + 1, chars, stopped, signum), after, carry


def _check_writable(run_dir: Path) -> None:
    """Fails before any work when the checkpoints could not be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CharlmError(f"checkpoint directory {run_dir} is a file, not a directory")
    for slot in (checkpoint.BEST, checkpoint.LAST):
        if (run_dir / slot).exists() and not (run_dir / slot).is_dir():
            raise CharlmError(f"checkpoint directory {run_dir} is damaged: {run_dir / slot} is a file")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"  # one per process: several may share run_dir
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise CharlmError(f"checkpoint directory {run_dir} is not writable: {e.strerror}") from None


def _epoch_record(epoch: int, state: TrainState, stats: EpochStats, cfg: RunConfig, corpus: Corpus,
                  seconds: float, elapsed: float) -> tuple[dict, str]:
    """The epoch's metrics.jsonl record (with the val loss, scored here, when there is a val split)
    and its Keras-style log line."""
    record = {"epoch": epoch, "step": int(state.step), "train_loss": stats.loss, "seconds": seconds,
              "elapsed": elapsed, "chars_per_s": stats.chars / seconds}
    line = (f"Epoch {epoch}/{cfg.train.epochs} - {seconds:.0f}s - {1000 * seconds / max(stats.steps, 1):.0f}ms/step"
            f" - {record['chars_per_s']:,.0f} chars/s - {train_metric(cfg)}: {stats.loss:.4f}")
    if cfg.data.val_frac > 0:
        record["val_loss"] = float(np.mean(validation_nll(state, cfg, corpus)))
        record["val_bits_per_char"] = record["val_loss"] / math.log(2)
        line += f" - {val_metric(cfg)}: {record['val_loss']:.4f} ({record['val_bits_per_char']:.3f} bits/char)"
    return record, line


def _append_metrics(run_dir: Path, record: dict) -> None:
    try:
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise CharlmError(f"cannot write {run_dir / 'metrics.jsonl'}: {e.strerror}; training stopped, "
                          f"the checkpoints are kept") from None


@dataclass
class TrainResult:
    state: TrainState
    best_loss: float
    history: list[dict]
    best_path: Path | None
    interrupted: int | None = None  # the signal that stopped training (SIGINT, SIGTERM), if any


@dataclass
class Run:
    """Everything a run sets up before its first step (`set_up_run`)."""
    cfg: RunConfig                # with vocab_size filled in from the text
    run_dir: Path
    corpus: Corpus
    windows: object               # charlm.dataset.training_windows
    steps_per_epoch: int
    place_batch: Callable
    state: TrainState
    position: Position            # where the first epoch starts (a resume: mid-epoch)
    carry: object                 # the stateful streams' carry on resume, else None
    dropout_rng: jax.Array
    meta: dict                    # every checkpoint's metadata (charlm.checkpoint)
    budget: TimeBudget
    early: EarlyStopping
    best: KeepBest
    last: LastCheckpoint
    log: Callable[[str], None]
    progress: bool | None

    def result(self, state: TrainState, history: list[dict], interrupted: int | None = None) -> TrainResult:
        return TrainResult(state, self.best.best_loss, history, self.best.best_path, interrupted)


@dataclass(frozen=True)
class Stop:
    """Why a run ends before its last epoch: a stop signal, the time budget or early stopping."""
    reason: str                   # "signal", "budget" or "early"
    mid_epoch: bool               # the epoch is unfinished (--resume goes on from its batch)
    signum: int | None = None

    @staticmethod
    def after(stats: EpochStats, mid_epoch: bool) -> Stop | None:
        """A signal mid-epoch wins over the budget; at an epoch's end the budget wins over a signal."""
        if stats.signal is not None and mid_epoch:
            return Stop("signal", True, stats.signal)
        if stats.stopped:
            return Stop("budget", mid_epoch)
        return Stop("signal", False, stats.signal) if stats.signal is not None else None

    def announce(self, run: Run, state: TrainState, position: Position, carry, epoch: int) -> int | None:
        """Saves the unfinished epoch's `last` checkpoint, says why the run stopped and returns the signal."""
        cfg, step, of = run.cfg, int(state.step), f"{position.batch} of {run.steps_per_epoch}"
        path = run.last.save(state, position, carry) if self.mid_epoch else None
        name = signal.Signals(self.signum).name if self.signum else ""
        resume = "Resume with the same command plus --resume."
        if self.reason == "signal":
            run.log(f"{name} received: stopped at epoch {epoch}, batch {of} (step {step}) and saved {path}. {resume}"
                    if self.mid_epoch else f"{name} received at the end of epoch {epoch}; saved the last checkpoint. "
                                           f"{resume}")
        elif self.reason == "budget":
            run.log(f"Time budget of {cfg.train.max_time:g} min reached "
                    + (f"during epoch {epoch}, batch {of}" if self.mid_epoch else f"at the end of epoch {epoch}")
                    + f" (after {step} steps); stopping.")
        else:
            run.log(f"Early stopping: {run.best.monitor} has not improved for {cfg.train.patience} epochs "
                    f"(best {run.best.best_loss:.5f} at epoch {run.best.best_epoch}).")
        return self.signum


def train(raw_text: str | TextFiles, cfg: RunConfig, run_dir: str | Path = "checkpoints", *, resume: bool = False,
          source: str = "", files: Sequence[dict] = (), log: Callable[[str], None] = print,
          progress: bool | None = None, data_parallel: bool | None = None, handle_signals: bool = True,
          save_every_minutes: float = DEFAULT_SAVE_EVERY_MINUTES, init_from: str | Path | None = None,
          vocab: str | None = None) -> TrainResult:
    """Trains on `raw_text` as configured, keeping the best checkpoint and the last state in `run_dir`.

    `raw_text` is the book as read (cleaned here as cfg.data says) or TextFiles, read through the
    token cache so a corpus of any size trains in flat memory. The best checkpoint has the lowest
    val loss (train loss without a val split, the tutorial's monitor='loss'; averaged weights with
    cfg.train.ema_decay). The `last` one is written at every epoch's end, every
    `save_every_minutes` and on SIGINT/SIGTERM (with `handle_signals`); `resume` continues it
    exactly. `set_up_run` describes the other arguments. First it tunes glibc's allocator for the
    whole process (charlm.host; CHARLM_ALLOCATOR=system opts out).
    """
    host.tune_allocator()  # train.py did already; this is for notebooks
    run = set_up_run(raw_text, cfg, Path(run_dir), resume=resume, source=source, files=files, log=log,
                     progress=progress, data_parallel=data_parallel, init_from=init_from, vocab=vocab)
    cfg, state, position, carry, history = run.cfg, run.state, run.position, run.carry, []
    epoch = position.epoch
    try:
        with run.best, StopRequests() if handle_signals else contextlib.nullcontext() as signals:
            while epoch <= cfg.train.epochs:
                started = time.monotonic()
                state, stats, position, carry = run_epoch(
                    state, epoch_batches(run.corpus, cfg, run.windows, epoch, position.batch), cfg, run.dropout_rng,
                    run.steps_per_epoch, f"Epoch {epoch}/{cfg.train.epochs}", run.progress, run.budget.deadline,
                    position=position, carry=carry, stop=signals, place=run.place_batch,
                    save_every=60 * save_every_minutes, save=run.last.save)
                stop = Stop.after(stats, mid_epoch=position.batch < run.steps_per_epoch)
                if stop is None or stop.reason == "budget":  # an epoch cut by a signal is not recorded
                    history.append(_end_of_epoch(run, epoch, state, stats, started))
                    state = run.budget.refit(epoch, state, stats.steps, started, run.log)
                if stop is None or not stop.mid_epoch:
                    position, carry = Position(epoch=epoch + 1), None  # a new epoch's streams start from zeros
                    run.last.save(state, position, None)
                    if stop is None and run.early.should_stop(epoch, run.best) and epoch < cfg.train.epochs:
                        stop = Stop("early", False)
                if stop is not None:
                    return run.result(state, history, stop.announce(run, state, position, carry, epoch))
                epoch += 1
    except Diverged as e:
        raise _diverged(run, epoch, e) from None
    return run.result(state, history)


def set_up_run(raw_text: str | TextFiles, cfg: RunConfig, run_dir: Path, *, resume: bool, source: str,
               files: Sequence[dict], log: Callable[[str], None], progress: bool | None,
               data_parallel: bool | None, init_from: str | Path | None, vocab: str | None) -> Run:
    """The corpus, its windows, the devices, the starting state and the checkpoint keepers of a run.

    source, files: where the text came from, stored in the checkpoint (TextFiles default to their
      files) so evaluate and --novelty can read the same text again.
    progress: a tqdm bar (None: when stderr is a terminal). data_parallel: split each batch over
      all local devices (None: when there are several).
    init_from: start from this checkpoint's weights (charlm.finetune): its vocabulary plus the
      text's new chars, a fresh optimizer and epoch count; the model shape must match.
    vocab: chars the vocabulary starts with, in this order (charlm.pretrain: printable ASCII).
    """
    if not distributed.is_primary():  # process 0 speaks for the run
        log, progress = (lambda line: None), False
    if distributed.multi_process() and cfg.data.stateful:
        raise CharlmError("--stateful training on several processes is not supported yet; train it on one")
    _check_writable(run_dir)
    base, origin = _base_vocab(run_dir, resume, init_from, vocab)
    if isinstance(raw_text, TextFiles):
        corpus = load_corpus(raw_text.paths, cfg, raw_text.encoding, raw_text.errors, extend=base, log=log)
        source, files = source or describe_files([f["path"] for f in corpus.files]), files or corpus.files
    else:
        corpus = prepare_corpus(raw_text, cfg, extend=base)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=corpus.vocab.size))
    windows = training_windows(corpus, cfg)
    for line in summary_lines(corpus, cfg, windows):
        log(line)
    T, B = cfg.data.seq_length, cfg.train.batch_size
    steps_per_epoch = windows.steps(B)
    total_steps = steps_per_epoch * cfg.train.epochs
    placed = distributed.placement(B, data_parallel)
    state, position, carry, fitted = _starting_point(run_dir, cfg, corpus, resume, total_steps, steps_per_epoch, log)
    if init_from is not None and not resume:
        state = _initialised_from(init_from, state, cfg, corpus, log)
    has_val = cfg.data.val_frac > 0
    monitor = val_metric(cfg) if has_val else train_metric(cfg)
    meta = _run_meta(cfg, corpus, source, monitor, files)
    if base is not None and origin is not None:  # a resume then extends the same vocabulary again
        meta["init_from"] = {"path": origin, "vocab": base.chars}
    elif base is not None:
        meta["vocab_start"] = base.chars
    log(f"Training {cfg.model.layers}x{cfg.model.hidden} {cfg.model.input_encoding} {cfg.model.cell.upper()} on "
        f"{placed.devices} {jax.devices()[0].platform.upper()} device{'s' if placed.devices > 1 else ''}: "
        f"{steps_per_epoch} steps/epoch of {B} {'streams' if cfg.data.stateful else 'windows'} x {T} chars, "
        f"objective {cfg.data.objective}")
    budget = TimeBudget(cfg, position.elapsed, total_steps, fitted)
    # as in the tutorial's ModelCheckpoint lines
    best = KeepBest(run_dir, monitor, "val_loss" if has_val else "loss", position.best_loss, log)
    return Run(cfg, run_dir, corpus, windows, steps_per_epoch, placed.put_batch, placed.put_state(state), position,
               None if carry is None else placed.put_batch(carry), jax.random.fold_in(jax.random.key(cfg.train.seed), 1),
               meta, budget, EarlyStopping(cfg.train.patience), best, LastCheckpoint(run_dir, cfg, meta, best, budget),
               log, progress)


def _end_of_epoch(run: Run, epoch: int, state: TrainState, stats: EpochStats, started: float) -> dict:
    """Logs the epoch's line, offers its weights to the best checkpoint and appends its metrics."""
    record, line = _epoch_record(epoch, state, stats, run.cfg, run.corpus, time.monotonic() - started,
                                 run.budget.elapsed)
    run.log(line)
    run.best.on_epoch_end(epoch, state, {**run.meta, "total_steps": run.budget.horizon()},
                          record["val_loss"] if "val_loss" in record else record["train_loss"])
    if distributed.is_primary():
        _append_metrics(run.run_dir, record)
    return record


def _diverged(run: Run, epoch: int, e: Diverged) -> CharlmError:
    best_found, last_found = checkpoint.latest_step(run.run_dir), checkpoint.find_last(run.run_dir)
    kept = ([f"the best checkpoint {best_found[0] / str(best_found[1])}"] if best_found else []) + \
           ([f"the last one in {last_found}"] if last_found else [])
    return CharlmError(f"training diverged at epoch {epoch}, {e}; "
                       f"{'kept ' + ' and '.join(kept) if kept else 'no checkpoint was written yet'}; "
                       f"try a lower --lr (now {run.cfg.train.learning_rate:g}) or --clip-norm 1")


def _starting_point(run_dir: Path, cfg: RunConfig, corpus: Corpus, resume: bool, total_steps: int,
                    steps_per_epoch: int, log: Callable[[str], None]):
    """(state, position, stateful carry or None, fitted lr horizon or None) of a fresh or resumed run."""
    existing = run_dir.exists() and (checkpoint.latest_step(run_dir) or checkpoint.find_last(run_dir))
    if not resume:
        if existing:
            raise CharlmError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, "
                              f"or choose another --ckpt-dir")
        init_rng = jax.random.fold_in(jax.random.key(cfg.train.seed), 0)
        return create_train_state(cfg, init_rng, total_steps), Position(epoch=1), None, None
    if not existing:
        raise CharlmError(f"nothing to resume: {run_dir} holds no charlm checkpoint")
    state, position, carry, fitted = resume_point(run_dir, cfg, corpus.vocab, corpus.fingerprint)
    if position.epoch > cfg.train.epochs:
        raise CharlmError(f"checkpoint in {run_dir} already has {position.epoch - 1} epochs; "
                          f"pass --epochs greater than that to train on")
    # The optimizer state's structure is the same; the lr schedule's horizon is this run's
    # (or the one fitted to the time budget, which this run keeps).
    state = state.replace(tx=make_optimizer(cfg, fitted or total_steps))
    if cfg.train.max_time and position.elapsed >= 60 * cfg.train.max_time:
        raise CharlmError(f"the run in {run_dir} has used its --max-time of {cfg.train.max_time:g} min "
                          f"({position.elapsed / 60:.1f} min trained); pass a larger --max-time to train on")
    log(f"Resuming at epoch {position.epoch}, batch {position.batch} of {steps_per_epoch} "
        f"(step {int(state.step)}; best loss {position.best_loss:.5f})")
    return state, position, carry, fitted


def _base_vocab(run_dir: Path, resume: bool, init_from: str | Path | None,
                vocab: str | None = None) -> tuple[Vocab | None, str | None]:
    """(the vocabulary a run extends, the checkpoint it came from): --init-from's, or the chars given,
    or on resume the ones the run started from (recorded in its metadata); (None, None) for a plain run."""
    if init_from is not None and vocab is not None:
        raise CharlmError("give init_from or vocab, not both: a fine-tune starts from its checkpoint's vocabulary")
    if init_from is not None and not resume:
        return checkpoint.config_from_meta(checkpoint.read_meta(init_from))[1], str(init_from)
    if vocab is not None and not resume:
        return Vocab(vocab), None
    found = resume and run_dir.exists() and (checkpoint.find_last(run_dir) or
                                             (checkpoint.latest_step(run_dir) and run_dir))
    meta = checkpoint.read_meta(found) if found else {}
    if meta.get("init_from"):
        return Vocab(meta["init_from"]["vocab"]), meta["init_from"]["path"]
    return (Vocab(meta["vocab_start"]), None) if meta.get("vocab_start") else (None, None)


def _initialised_from(init_from: str | Path, state: TrainState, cfg: RunConfig, corpus: Corpus,
                      log: Callable[[str], None]) -> TrainState:
    old, old_cfg, old_vocab, _ = checkpoint.restore(init_from)
    check_compatible(old_cfg.model, cfg.model, old_vocab, corpus.vocab, str(init_from))
    params = transplant(eval_params(old), state.params, old_vocab.size)
    ema = jax.tree.map(jnp.copy, params) if state.ema_params is not None else None
    log(f"Initialised from {init_from} ({old_vocab.size} chars; {corpus.vocab.size - old_vocab.size} new)")
    return state.replace(params=params, ema_params=ema)


def _run_meta(cfg: RunConfig, corpus: Corpus, source: str, monitor: str, files: Sequence[dict]) -> dict:
    """The JSON that every checkpoint of the run carries: config, vocabulary, seeds, corpus and split."""
    return {"config": cfg.to_dict(), "vocab": corpus.vocab.chars, "metric": monitor,
            "seeds": [corpus.vocab.decode(w) for w in
                      seed_windows(corpus.train_tokens, cfg.data.seq_length, NUM_SEEDS, cfg.train.seed)],
            "corpus": {"source": source, "chars": len(corpus.tokens) + corpus.test_chars, "split": corpus.split,
                       "test_start": len(corpus.tokens), "fingerprint": corpus.fingerprint,
                       **({"files": list(files)} if files else {})}}
