"""--init-from: old rows copied exactly, new chars get fresh rows, a shape mismatch is one line."""

import jax
import numpy as np
import pytest

from charlm.checkpoint import read_meta, restore
from charlm.config import make_run_config
from charlm.errors import CharlmError
from charlm.finetune import transplant
from charlm.model import init_params
from charlm.trainer import train

OLD_TEXT = "the cat sat on the mat. " * 12
NEW_TEXT = "the dog sat on the log! " * 12  # adds d, g, l, !


@pytest.mark.parametrize("encoding", ["embed", "onehot"])
def test_transplant_copies_old_rows_and_keeps_fresh_ones(encoding):
    old_cfg = make_run_config(hidden=8, input_encoding=encoding, embed_dim=4, vocab_size=5).model
    new_cfg = make_run_config(hidden=8, input_encoding=encoding, embed_dim=4, vocab_size=7).model
    old, fresh = init_params(old_cfg, jax.random.key(1)), init_params(new_cfg, jax.random.key(2))
    moved = transplant(old, fresh, 5)
    for path, leaf in jax.tree_util.tree_leaves_with_path(moved):
        o = dict(jax.tree_util.tree_leaves_with_path(old))[path]
        f = dict(jax.tree_util.tree_leaves_with_path(fresh))[path]
        if o.shape == f.shape:
            np.testing.assert_array_equal(leaf, o)
        else:
            axis = next(a for a in range(o.ndim) if o.shape[a] != f.shape[a])
            np.testing.assert_array_equal(np.take(leaf, range(5), axis=axis), o)
            np.testing.assert_array_equal(np.take(leaf, range(5, 7), axis=axis), np.take(f, range(5, 7), axis=axis))
    grown = [p for p, leaf in jax.tree_util.tree_leaves_with_path(moved) if 7 in leaf.shape]
    assert len(grown) == 3, "the input rows, the output kernel's columns and the output bias"
    bigger = init_params(make_run_config(hidden=16, input_encoding=encoding, embed_dim=4, vocab_size=7).model,
                         jax.random.key(2))
    with pytest.raises(CharlmError, match=r"has shape \(.*\), this model's is"):
        transplant(old, bigger, 5)


def test_a_run_started_from_another_extends_its_vocabulary_and_resumes(tmp_path):
    cfg = make_run_config(hidden=16, seq_length=8, batch_size=16, epochs=1, input_encoding="embed", embed_dim=8)
    train(OLD_TEXT, cfg, tmp_path / "old", log=lambda s: None, progress=False)
    old_state, _, old_vocab, _ = restore(tmp_path / "old")
    lines = []
    two = make_run_config(hidden=16, seq_length=8, batch_size=16, epochs=2, input_encoding="embed", embed_dim=8)
    train(NEW_TEXT, two, tmp_path / "new", log=lines.append, progress=False, init_from=tmp_path / "old")
    assert any(f"Initialised from {tmp_path / 'old'} ({old_vocab.size} chars; 4 new)" in line for line in lines)
    assert any(line.startswith("Epoch 1/2") for line in lines), "a fresh epoch count"
    meta = read_meta(tmp_path / "new")
    assert meta["vocab"] == old_vocab.chars + "!dgl" and meta["init_from"]["vocab"] == old_vocab.chars
    # --resume of the fine-tuned run rebuilds the same extended vocabulary
    resumed = make_run_config(hidden=16, seq_length=8, batch_size=16, epochs=3, input_encoding="embed", embed_dim=8)
    result = train(NEW_TEXT, resumed, tmp_path / "new", resume=True, log=lines.append, progress=False)
    assert result.best_path is not None and read_meta(tmp_path / "new")["vocab"] == meta["vocab"]


def test_shape_flags_default_to_the_checkpoints_and_a_mismatch_is_one_line(tmp_path, capsys, small_text_file):
    from conftest import TINY

    from charlm.cli import train_main

    assert train_main(["--text", str(small_text_file), "--ckpt-dir", str(tmp_path / "a"), "--input-encoding",
                       "onehot", *TINY]) == 0
    args = ["--text", str(small_text_file), "--init-from", str(tmp_path / "a"), *TINY]
    assert train_main([*args, "--ckpt-dir", str(tmp_path / "b")]) == 0, "the onehot input comes from a"
    assert restore(tmp_path / "b")[1].model.input_encoding == "onehot"
    capsys.readouterr()
    assert train_main([*args, "--ckpt-dir", str(tmp_path / "c"), "--hidden", "32", "--layers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the model shape differs (layers 1 vs 2; hidden 16 vs 32)" in err[0], err


def test_a_vocabulary_given_up_front_is_kept_and_resumed(tmp_path):
    # charlm.pretrain gives every printable ASCII char a row, seen in the text or not
    start = "\n !.abcdefghijklmnopqrstuvwxyz"
    cfg = make_run_config(hidden=16, seq_length=8, batch_size=16, epochs=1, input_encoding="embed", embed_dim=8)
    train(OLD_TEXT + "é", cfg, tmp_path / "run", log=lambda s: None, progress=False, vocab=start)
    meta = read_meta(tmp_path / "run")
    assert meta["vocab"] == start + "é" and meta["vocab_start"] == start and "init_from" not in meta
    longer = make_run_config(hidden=16, seq_length=8, batch_size=16, epochs=2, input_encoding="embed", embed_dim=8)
    train(OLD_TEXT + "é", longer, tmp_path / "run", resume=True, log=lambda s: None, progress=False)
    assert read_meta(tmp_path / "run")["vocab"] == start + "é"
    with pytest.raises(CharlmError, match="init_from or vocab, not both"):
        train(OLD_TEXT, cfg, tmp_path / "other", log=lambda s: None, progress=False, vocab=start,
              init_from=tmp_path / "run")
