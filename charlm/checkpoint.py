"""Self-contained orbax checkpoints: arrays through orbax, everything else as JSON.

Layout of a run directory (`--ckpt-dir`):
  best/<epoch>/state/   params, optimizer state and step (orbax StandardSave; OCDBT)
  best/<epoch>/meta/    JSON: configs, vocabulary, epoch, loss, seed windows, corpus fingerprint
  metrics.jsonl         one JSON line per epoch (written by the trainer)
Only the best checkpoint is kept. Loading never unpickles anything: orbax reads arrays
through tensorstore and the metadata is `json.loads`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from charlm.config import RunConfig
from charlm.data import Vocab
from charlm.errors import CharlmError
from charlm.training import TrainState, create_train_state

FORMAT = "charlm-checkpoint"
FORMAT_VERSION = 1
BEST = "best"


class BestCheckpoint:
    """Keeps the lowest-loss checkpoint of a run in `<run_dir>/best`."""

    def __init__(self, run_dir: str | Path):
        self.directory = Path(run_dir) / BEST
        options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda metrics: metrics["loss"],
                                               best_mode="min", enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options)

    def save(self, epoch: int, state: TrainState, meta: dict[str, Any], loss: float) -> Path:
        tree = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
        meta = {"format": FORMAT, "version": FORMAT_VERSION, **meta, "epoch": epoch, "loss": loss}
        self._manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                          meta=ocp.args.JsonSave(meta)),
                           metrics={"loss": float(loss)}, force=True)
        self._manager.wait_until_finished()
        return self.directory / str(epoch)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _best_dir(path: Path) -> Path:
    """Accepts a run directory or its best/ subdirectory."""
    return path / BEST if (path / BEST).is_dir() else path


def latest_step(path: str | Path) -> tuple[Path, int] | None:
    """(best directory, step) of the checkpoint under `path`, or None if there is none."""
    best = _best_dir(Path(path))
    if not best.is_dir():
        return None
    steps = [int(p.name) for p in best.iterdir()
             if p.is_dir() and p.name.isdigit() and (p / "meta").is_dir() and (p / "state").is_dir()]
    return (best, max(steps)) if steps else None


def _locate(path: str | Path) -> tuple[Path, int]:
    path = Path(path)
    if not path.exists():
        raise CharlmError(f"checkpoint directory not found: {path}")
    found = latest_step(path)
    if found is None:
        raise CharlmError(f"{path} holds no charlm checkpoint (expected {path}/{BEST}/<epoch>/ from train.py)")
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
    if meta.get("version") != FORMAT_VERSION:
        raise CharlmError(f"checkpoint {best / str(step)} has format version {meta.get('version')!r}; "
                          f"this charlm reads version {FORMAT_VERSION}")
    for key, kind in (("config", dict), ("vocab", str), ("epoch", int), ("loss", (int, float)), ("seeds", list)):
        if not isinstance(meta.get(key), kind):
            raise CharlmError(f"checkpoint metadata {meta_file} has a missing or malformed {key!r}")
    return meta


def config_from_meta(meta: dict[str, Any]) -> tuple[RunConfig, Vocab]:
    try:
        cfg = RunConfig.from_dict(meta["config"])
    except (CharlmError, TypeError) as e:
        raise CharlmError(f"checkpoint config is invalid: {e}") from None
    vocab = Vocab(meta["vocab"])
    if not vocab.chars or cfg.model.vocab_size != vocab.size:
        raise CharlmError(f"checkpoint vocabulary has {vocab.size} chars but the model expects "
                          f"{cfg.model.vocab_size}")
    return cfg, vocab


def restore(path: str | Path) -> tuple[TrainState, RunConfig, Vocab, dict[str, Any]]:
    """Loads the checkpoint under `path` onto the default device (CPU if no GPU).

    Returns (train state with optimizer state, run config, vocabulary, metadata). The
    optimizer's lr schedule has the horizon the run used (meta["total_steps"]).
    """
    meta = read_meta(path)
    cfg, vocab = config_from_meta(meta)
    best, step = _locate(path)
    template = jax.eval_shape(lambda: create_train_state(cfg, jax.random.key(0)))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          {"params": template.params, "opt_state": template.opt_state, "step": template.step})
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore((best / str(step) / "state").absolute(), target)
    except Exception as e:  # orbax raises many types for damaged or mismatched arrays
        raise CharlmError(f"cannot restore checkpoint {best / str(step)}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None
    total_steps = meta.get("total_steps", 1) if isinstance(meta.get("total_steps"), int) else 1
    state = create_train_state(cfg, jax.random.key(0), total_steps).replace(
        params=tree["params"], opt_state=tree["opt_state"], step=tree["step"])
    return state, cfg, vocab, meta
