import dataclasses
import json

import jax
import numpy as np
import pytest

from charlm import checkpoint
from charlm.config import make_run_config
from charlm.data import Vocab, gather_batch
from charlm.training import create_train_state, train_step
from charlm.errors import CharlmError
from charlm.trainer import train

TEXT = "the cat sat on the mat. " * 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_run_config(hidden=16, seq_length=10, batch_size=32, epochs=3, layers=2)
    lines = []
    result = train(TEXT, cfg, run_dir, log=lines.append, progress=False, source="cats")
    return run_dir, result, lines


def test_metadata_describes_the_run(trained):
    run_dir, result, _ = trained
    _, cfg, vocab, meta = checkpoint.restore(run_dir)
    assert vocab.chars == "".join(sorted(set(TEXT)))
    assert cfg.model.layers == 2 and cfg.model.vocab_size == vocab.size
    best_epoch = min(result.history, key=lambda r: r["train_loss"])["epoch"]
    assert meta["epoch"] == best_epoch and meta["loss"] == pytest.approx(result.best_loss)
    assert meta["corpus"]["source"] == "cats" and len(meta["seeds"]) > 0
    assert all(len(s) == cfg.data.seq_length for s in meta["seeds"])


def test_round_trip_gives_identical_logits_and_optimizer_state(tmp_path):
    cfg = make_run_config(hidden=16, layers=2, seq_length=10)
    vocab = Vocab.from_text(TEXT)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab.size))
    state = create_train_state(cfg, jax.random.key(0))
    batch = gather_batch(vocab.encode(TEXT), np.arange(32), 10)
    state, _ = train_step(state, batch, jax.random.key(1))
    meta = {"config": cfg.to_dict(), "vocab": vocab.chars, "seeds": ["the cat sa"]}
    with checkpoint.BestCheckpoint(tmp_path) as best:
        best.save(1, state, meta, 1.5)
    restored, cfg2, vocab2, meta2 = checkpoint.restore(tmp_path)
    assert (cfg2, vocab2, meta2["seeds"], meta2["loss"]) == (cfg, vocab, ["the cat sa"], 1.5)
    ids = jax.numpy.asarray(vocab.encode(TEXT[:30])[None])
    a, _ = state.apply_fn({"params": state.params}, ids)
    b, _ = restored.apply_fn({"params": restored.params}, ids)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    jax.tree.map(np.testing.assert_array_equal, state.opt_state, restored.opt_state)
    assert int(restored.step) == int(state.step) == 1
    # the next step from the restored state is the same step
    s1, m1 = train_step(state, batch, jax.random.key(2))
    s2, m2 = train_step(restored, batch, jax.random.key(2))
    assert float(m1["loss"]) == float(m2["loss"])


def test_only_the_best_epoch_is_kept(trained):
    run_dir, result, lines = trained
    kept = sorted(p.name for p in (run_dir / "best").iterdir())
    best_epoch = min(result.history, key=lambda r: r["train_loss"])["epoch"]
    assert kept == [str(best_epoch)]
    assert any("loss improved from inf to" in line for line in lines)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3


def test_keeps_best_when_a_later_epoch_is_worse(tmp_path, monkeypatch):
    """Epoch losses 3, 2, 2.5: epoch 2 is saved and epoch 3 never replaces it."""
    import charlm.trainer as trainer

    losses = iter([3.0, 2.0, 2.5])
    monkeypatch.setattr(trainer, "run_epoch", lambda state, *args, position, carry, **kw: (
        state, trainer.EpochStats(next(losses), 1, 10, False), position, carry))
    saved, lines = [], []
    real_save = checkpoint.BestCheckpoint.save

    def save(self, epoch, state, meta, loss):
        saved.append(epoch)
        return real_save(self, epoch, state, meta, loss)

    monkeypatch.setattr(checkpoint.BestCheckpoint, "save", save)
    train(TEXT, make_run_config(hidden=8, seq_length=10, epochs=3), tmp_path, log=lines.append, progress=False)
    assert saved == [1, 2]
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["2"]
    assert "loss did not improve from 2.00000" in lines[-1]
    assert checkpoint.read_meta(tmp_path)["loss"] == 2.0


def test_missing_and_empty_checkpoint_dirs(tmp_path):
    with pytest.raises(CharlmError, match="not found"):
        checkpoint.restore(tmp_path / "nope")
    with pytest.raises(CharlmError, match="holds no charlm checkpoint"):
        checkpoint.restore(tmp_path)


def test_malformed_metadata_is_a_clear_error(tmp_path, trained):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained[0], run_dir)
    meta_file = next((run_dir / "best").iterdir()) / "meta" / "metadata"
    meta_file.write_text("{not json")
    with pytest.raises(CharlmError, match="not JSON"):
        checkpoint.restore(run_dir)
    meta_file.write_text(json.dumps({"format": "charlm-checkpoint", "version": 99}))
    with pytest.raises(CharlmError, match="format version 99"):
        checkpoint.restore(run_dir)
