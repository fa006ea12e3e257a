"""The honest protocol: a --test-frac tail that no training window, validation pass or tuning call reaches."""

import json

import numpy as np
import pytest

import charlm.dataset as dataset
import charlm.trainer as trainer
from charlm.config import make_run_config
from charlm.data import split_point
from charlm.dataset import epoch_batches, held_out_splits, prepare_corpus, summary_lines, training_windows
from charlm.errors import CharlmError

SPLIT = dict(val_frac=0.1, test_frac=0.1)


def test_the_test_tail_is_what_evaluate_val_frac_scores_and_val_is_the_slice_before_it():
    for n in (1001, 14_443, 144_433, 1_000_003):
        test_start, val_start = held_out_splits(n, 0.1, 0.1)
        assert test_start == split_point(n, 0.1)  # `charlm.evaluate --val-frac 0.1` scores tokens[test_start:]
        assert val_start == split_point(n, 0.2) < test_start
    assert held_out_splits(144_433, 0.1, 0.0) == (144_433, split_point(144_433, 0.1))  # no test split: as before
    assert held_out_splits(144_433, 0.0, 0.1) == (129_989, 129_989)
    assert 144_433 - held_out_splits(144_433, 0.1, 0.1)[0] == 14_444


@pytest.mark.parametrize("mode", [{}, {"objective": "all"}, {"objective": "all", "stateful": True, "batch_size": 8},
                                  {"objective": "all", "windowing": "sentences"}])
def test_no_test_or_val_char_is_in_any_training_batch(wonderland_path, mode):
    """Checked on the indices every batch of an epoch reads: inputs and targets end before the val slice."""
    cfg = make_run_config(**SPLIT, **mode)
    raw = wonderland_path.read_text(encoding="utf-8")
    corpus = prepare_corpus(raw, cfg)
    n = len(corpus.tokens) + corpus.test_chars
    test_start, val_start = held_out_splits(n, 0.1, 0.1)
    assert len(corpus.tokens) == test_start and corpus.split == val_start and corpus.test_chars == 14_444
    windows = training_windows(corpus, cfg)
    read = []  # the last token index each batch of epoch 1 uses
    real = dataset.gather_batch

    def recording(tokens, s, T, batch_size=None, lengths=None):
        # window i uses tokens[s_i : s_i + T + 1], or its first lengths[i] of them (sentences)
        used = T + 1 if lengths is None else np.minimum(np.asarray(lengths), T + 1)
        read.append(int(np.max(np.asarray(s) + used - 1)))
        return real(tokens, s, T, batch_size, lengths)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataset, "gather_batch", recording)
        count = sum(1 for _ in epoch_batches(corpus, cfg, windows, epoch=1))
    assert count == len(read) > 0 and max(read) < val_start
    assert any("Test Characters: 14444" in line for line in summary_lines(corpus, cfg))


def test_training_never_passes_test_chars_to_the_validation_pass(monkeypatch, wonderland_path, tmp_path):
    text = wonderland_path.read_text(encoding="utf-8")[:4000]
    seen = []
    real = trainer.tail_nll

    def recording(params, cfg, tokens, split, *args):
        seen.append((len(tokens), split))
        return real(params, cfg, tokens, split, *args)
    monkeypatch.setattr(trainer, "tail_nll", recording)
    cfg = make_run_config(hidden=8, seq_length=20, batch_size=8, epochs=2, objective="all", stateful=True, **SPLIT)
    lines = []
    trainer.train(text, cfg, tmp_path / "ck", log=lines.append, progress=False)
    corpus = prepare_corpus(text, cfg)
    n = len(corpus.tokens) + corpus.test_chars
    test_start, val_start = held_out_splits(n, 0.1, 0.1)
    assert seen and all(length == test_start and split == val_start for length, split in seen)
    meta = json.loads(next((tmp_path / "ck" / "best").glob("*/meta/metadata")).read_text())
    assert meta["corpus"]["test_start"] == test_start and meta["corpus"]["chars"] == n
    assert meta["config"]["data"]["test_frac"] == 0.1



def test_fractions_that_leave_no_training_text_are_refused():
    with pytest.raises(CharlmError, match="leave no text to train on"):
        make_run_config(val_frac=0.5, test_frac=0.5)
