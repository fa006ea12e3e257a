"""Self-contained orbax checkpoints: arrays through orbax, everything else as JSON.

Layout of a run directory (`--ckpt-dir`):
  best/<epoch>/state/   params (the moving average, when training kept one), optimizer state and
                        step (orbax StandardSave; OCDBT)
  best/<epoch>/meta/    JSON: configs, vocabulary, epoch, loss, seed windows, corpus fingerprint
  metrics.jsonl         one JSON line per epoch (written by the trainer)
Only the best checkpoint is kept. Loading never unpickles anything: orbax reads arrays
through tensorstore and the metadata is `json.loads`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from charlm import distributed
from charlm.config import RunConfig
from charlm.data import Vocab
from charlm.errors import CharlmError
from charlm.training import TrainState, create_train_state, train_state_from

FORMAT = "charlm-checkpoint"
FORMAT_VERSION = 1
BEST = "best"
LAST = "last"  # the newest state, for an exact --resume


def _save_options(**kw) -> ocp.CheckpointManagerOptions:
    # Synchronous saves; a step directory appears only once complete (orbax writes to a tmp dir and
    # renames it), and tmp dirs left by a killed save are removed when a manager opens the slot.
    return ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                        cleanup_tmp_directories=True, **kw)


def _first_line(e: Exception) -> str:
    """The start of an orbax/tensorstore error, which can run to many lines of JSON."""
    return (str(e).splitlines() or [""])[0][:200]


def _save(manager: ocp.CheckpointManager, key: int, tree: dict, meta: dict[str, Any], **kw) -> None:
    """One orbax save of arrays + JSON; any failure (disk full, permissions) is a one-line CharlmError.
    The slot's previous checkpoint is deleted only after the new one is complete, so it survives."""
    try:
        manager.save(key, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
                     force=True, **kw)
        manager.wait_until_finished()
    except Exception as e:
        raise CharlmError(f"could not save a checkpoint in {manager.directory} ({type(e).__name__}: "
                          f"{_first_line(e)}); training stopped, the previous checkpoints are kept") from None


def _state_tree(state: TrainState, carry=None) -> dict:
    tree = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
    if state.ema_params is not None:
        tree["ema_params"] = state.ema_params
    return tree if carry is None else {**tree, "carry": carry}


class BestCheckpoint:
    """Keeps the lowest-loss checkpoint of a run in `<run_dir>/best`."""

    def __init__(self, run_dir: str | Path):
        self.directory = Path(run_dir) / BEST
        options = _save_options(best_fn=lambda metrics: metrics["loss"], best_mode="min")
        try:  # orbax reads each step's metrics file here; a hand-edited one must not be a traceback
            self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options)
        except Exception as e:
            raise CharlmError(f"cannot open the best checkpoints in {self.directory} ({type(e).__name__}: "
                              f"{_first_line(e)})") from None

    def save(self, epoch: int, state: TrainState, meta: dict[str, Any], loss: float) -> Path:
        """Saves epoch `epoch` as the new best. An epoch that a time budget cut short and --resume then
        finished can be saved twice; the better, later one replaces the first."""
        meta = {"format": FORMAT, "version": FORMAT_VERSION, **meta, "epoch": epoch, "loss": loss}
        if epoch in self._manager.all_steps():
            self._manager.delete(epoch)
        if state.ema_params is not None:  # the averaged weights are the model; `last` keeps the raw ones
            state = state.replace(params=state.ema_params)
        _save(self._manager, epoch, _state_tree(state), meta, metrics={"loss": float(loss)})
        return self.directory / str(epoch)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def find_last(run_dir: str | Path) -> Path | None:
    """The `<run_dir>/last` slot if it holds a complete checkpoint, else None."""
    slot = Path(run_dir) / LAST
    found = latest_step(slot)
    return slot if found and all((slot / str(found[1]) / part).is_dir() for part in ("meta", "state")) else None


def save_last(run_dir: str | Path, state: TrainState, meta: dict[str, Any], carry=None) -> Path:
    """Writes the run's newest state (and stateful carry) to `<run_dir>/last`, replacing the previous one.

    Saves are numbered 1, 2, ... so an epoch end and a signal at the same train step are two saves."""
    slot = Path(run_dir) / LAST
    distributed.barrier("charlm-save-last")  # every process numbers the save from the same listing
    found = latest_step(slot)
    key = found[1] + 1 if found else 1
    meta = {"format": FORMAT, "version": FORMAT_VERSION, **meta}
    with ocp.CheckpointManager(slot.absolute(), options=_save_options()) as manager:
        _save(manager, key, _state_tree(state, carry), meta)
    return slot / str(key)


def _best_dir(path: Path) -> Path:
    """Accepts a run directory or its best/ subdirectory."""
    return path / BEST if (path / BEST).is_dir() else path


def latest_step(path: str | Path) -> tuple[Path, int] | None:
    """(best directory, step) of the checkpoint under `path`, or None if there is none.

    An incomplete or damaged step directory counts, so that training refuses to write over
    it; `_locate` says what is wrong with it. Orbax's in-progress `<n>.orbax-checkpoint-tmp-*`
    directories do not.
    """
    best = _best_dir(Path(path))
    if not best.is_dir():
        return None
    steps = [int(p.name) for p in best.iterdir() if p.name.isdigit()]
    return (best, max(steps)) if steps else None


# Checkpoints that ship with charlm, by name (charlm.base); a local directory of the same name wins.
BASE_DIR = Path(__file__).parent / "models" / "base"
NAMED = {"base": BASE_DIR}


def resolve(path: str | Path) -> Path:
    """`path`, or the packaged checkpoint it names when no such local path exists."""
    path = Path(path)
    return NAMED[str(path)] if str(path) in NAMED and not path.exists() else path


def _locate(path: str | Path) -> tuple[Path, int]:
    path = resolve(path)
    if not path.exists():
        raise CharlmError(f"checkpoint directory not found: {path}")
    if not path.is_dir():
        raise CharlmError(f"checkpoint path {path} is a file, not a checkpoint directory")
    if (path / BEST).exists() and not (path / BEST).is_dir():
        raise CharlmError(f"checkpoint {path} is damaged: {path / BEST} is a file, not a directory")
    found = latest_step(path)
    if found is None:
        raise CharlmError(f"{path} holds no charlm checkpoint (expected {path}/{BEST}/<epoch>/ from train.py)")
    best, step = found
    for part in ("meta", "state"):
        if not (best / str(step) / part).is_dir():
            raise CharlmError(f"checkpoint {best / str(step)} is incomplete: its {part}/ directory is missing "
                              f"(an interrupted copy, or files deleted by hand?)")
    return found


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of the checkpoint under `path`, validated."""
    best, step = _locate(path)
    meta_file = best / str(step) / "meta" / "metadata"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CharlmError(f"checkpoint metadata {meta_file} is unreadable or not JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CharlmError(f"{meta_file} is not charlm checkpoint metadata")
    version = meta.get("version")
    if version != FORMAT_VERSION:
        newer = _is_int(version) and version > FORMAT_VERSION
        raise CharlmError(f"checkpoint {best / str(step)} has format version {version!r}; this charlm reads "
                          f"version {FORMAT_VERSION}" + ("; it was written by a newer charlm, upgrade to read it"
                                                         if newer else ""))
    for key, (ok, required) in _META_FIELDS.items():
        if (key in meta or required) and not ok(meta.get(key)):
            raise CharlmError(f"checkpoint metadata {meta_file} has a missing or malformed {key!r}")
    return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# key: (check, required). Everything a loader reads from the metadata is checked here, so a
# hand-edited file fails with one line instead of a TypeError deep inside sampling.
_META_FIELDS = {
    "config": (lambda v: isinstance(v, dict), True),
    "vocab": (lambda v: isinstance(v, str), True),
    "epoch": (lambda v: _is_int(v) and v >= 0, True),
    "loss": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), True),
    "seeds": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(s, str) and s for s in v), True),
    "total_steps": (lambda v: _is_int(v) and v > 0, False),
    "corpus": (lambda v: isinstance(v, dict) and isinstance(v.get("source", ""), str)
               and all(isinstance(f, dict) and isinstance(f.get("path"), str) for f in v.get("files", [])), False),
}


def read_training_text(meta: dict[str, Any], cfg: RunConfig, paths: Sequence[str] | None = None,
                       encoding: str = "utf-8", errors: str = "strict", glob: str | None = None) -> tuple[str, str]:
    """The text `paths` hold (files and directories; default: the checkpoint's own training
    files), read and cleaned as training did: (cleaned text, a label naming it)."""
    from charlm.corpus import clean_text, describe_files, find_text_files, read_texts

    if not paths:
        paths = training_files(meta)
        if not paths:
            raise CharlmError("pass --text FILE: the checkpoint does not record its training text")
    files = find_text_files(list(paths), glob)
    d = cfg.data
    raw, _ = read_texts(files, encoding, errors, strip=d.strip)
    text = clean_text(raw, lowercase=d.lowercase, strip=d.strip, strip_punctuation=d.strip_punctuation)
    return text, describe_files(files)


def training_files(meta: dict[str, Any]) -> list[str]:
    """The paths of the text a checkpoint was trained on, as its metadata records them (or [])."""
    corpus = meta.get("corpus") or {}
    if corpus.get("files"):
        return [f["path"] for f in corpus["files"]]
    return [corpus["source"]] if corpus.get("source") else []


def config_from_meta(meta: dict[str, Any]) -> tuple[RunConfig, Vocab]:
    try:
        cfg = RunConfig.from_dict(meta["config"])
    except (CharlmError, TypeError) as e:
        raise CharlmError(f"checkpoint config is invalid: {e}") from None
    vocab = Vocab(meta["vocab"])
    if not vocab.chars or cfg.model.vocab_size != vocab.size:
        raise CharlmError(f"checkpoint vocabulary has {vocab.size} chars but the model expects "
                          f"{cfg.model.vocab_size}")
    if len(set(vocab.chars)) != vocab.size:  # ids are positions: a repeated char would shift every later id
        raise CharlmError(f"checkpoint vocabulary repeats chars: {vocab.size} chars, "
                          f"{len(set(vocab.chars))} distinct")
    return cfg, vocab


def restore(path: str | Path, carry=None) -> tuple[TrainState, RunConfig, Vocab, dict[str, Any]]:
    """Loads the checkpoint under `path` onto the default device (CPU if no GPU).

    Returns (train state with optimizer state, run config, vocabulary, metadata). The
    optimizer's lr schedule has the horizon the run used (meta["total_steps"]). With a `carry`
    template, a `last` checkpoint's stateful carry is restored too, as meta["carry"].
    """
    meta = read_meta(path)
    cfg, vocab = config_from_meta(meta)
    best, step = _locate(path)
    template = jax.eval_shape(lambda: create_train_state(cfg, jax.random.key(0)))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          _state_tree(template, carry))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore((best / str(step) / "state").absolute(), target)
    except Exception as e:  # noqa: BLE001 (orbax raises many types for damaged or mismatched arrays)
        # tensorstore chains its causes (the root one last) and appends its JSON spec: keep the causes.
        detail = re.split(r" \[(?:tensorstore_spec|source locations)", (str(e).splitlines() or [""])[0])[0]
        detail = detail if len(detail) <= 240 else f"{detail[:120]} ... {detail[-120:]}"
        raise CharlmError(f"cannot restore checkpoint {best / str(step)}: its array files are damaged, missing "
                          f"or do not match its metadata ({type(e).__name__}: {detail})") from None
    total_steps = meta.get("total_steps", 1) if isinstance(meta.get("total_steps"), int) else 1
    state = train_state_from(cfg, tree["params"], tree["opt_state"], tree["step"], total_steps,
                             tree.get("ema_params"))
    return state, cfg, vocab, {**meta, "carry": tree.get("carry")}
