"""The epoch loop's options, on a small slice of Alice."""

import json

import pytest

from charlm.config import make_run_config
from charlm.trainer import train


@pytest.fixture(scope="module")
def alice(wonderland_path):
    return wonderland_path.read_text(encoding="utf-8")[:6000]


def run(text, tmp_path, **kw):
    lines = []
    base = dict(hidden=16, seq_length=20, batch_size=16, epochs=2, dropout=0.0)
    result = train(text, make_run_config(**{**base, **kw}), tmp_path, log=lines.append, progress=False)
    return result, lines


def test_validation_split_reports_val_loss_and_picks_best_by_it(alice, tmp_path):
    result, lines = run(alice, tmp_path, val_frac=0.2, objective="all")
    assert "Train Characters: 4736, Val Characters: 1185 (the contiguous last 20%)" in lines
    assert all("val_loss" in r and "val_bits_per_char" in r for r in result.history)
    assert any("val loss (stream)" in l and "train loss (all-chars)" in l for l in lines)
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result.best_loss == min(r["val_loss"] for r in records)
    assert any("val_loss improved from inf" in l for l in lines)


def test_dense_objective_uses_non_overlapping_windows(alice, tmp_path):
    _, lines = run(alice, tmp_path, objective="all", epochs=1)
    assert "Total Patterns: 296" in lines  # (5921 - 21) // 20 + 1


def test_stateful_streams_carry_the_state_from_batch_to_batch(alice, tmp_path, monkeypatch):
    import charlm.trainer as trainer

    seen = []  # (carry passed in, carry returned, first input column) per step
    real = trainer.stateful_train_step

    def spy(state, batch, rng, carry, objective):
        state, metrics, new_carry = real(state, batch, rng, carry, objective=objective)
        seen.append((carry, new_carry, batch))
        return state, metrics, new_carry

    monkeypatch.setattr(trainer, "stateful_train_step", spy)
    result, lines = run(alice, tmp_path, objective="all", stateful=True, batch_size=8, epochs=2)
    assert any("steps/epoch of 8 streams x 20 chars" in l for l in lines)
    assert len(seen) == 2 * 37  # ((5921 - 1) // 8) // 20 steps per epoch
    for k in range(1, 37):  # within an epoch: the carry out of step k-1 goes into step k ...
        assert seen[k][0] is seen[k - 1][1]
        # ... and each stream's next window starts where its last one ended
        assert (seen[k][2]["inputs"][:, 0] == seen[k - 1][2]["targets"][:, -1]).all()
    assert float(abs(seen[37][0][0][1]).max()) == 0.0, "the state is reset at the start of each epoch"


def test_resume_refuses_a_changed_config_naming_the_field(alice, tmp_path):
    from charlm.errors import CharlmError
    run(alice, tmp_path, epochs=1)
    with pytest.raises(CharlmError, match=r"config differs.*dropout 0.0 -> 0.1.*objective 'last' -> 'all'"):
        train(alice, make_run_config(hidden=16, seq_length=20, batch_size=16, epochs=2, dropout=0.1,
                                     objective="all"), tmp_path, resume=True, log=lambda s: None)


def test_sentence_windows_train(alice, tmp_path):
    result, lines = run(alice, tmp_path, objective="all", windowing="sentences", epochs=1)
    patterns = int(next(l for l in lines if l.startswith("Total Patterns")).split(": ")[1])
    assert 20 < patterns < 150  # one window per sentence, far fewer than sliding windows


def test_max_time_stops_cleanly_with_a_checkpoint(alice, tmp_path):
    result, lines = run(alice, tmp_path, epochs=50, max_time=0.001, val_frac=0.1, objective="all")
    assert len(result.history) == 1 and result.history[0]["step"] < 30
    assert "Time budget of 0.001 min reached during epoch 1" in lines[-1]
    assert result.best_path is not None and result.best_path.exists()


def test_a_tanh_rnn_trains_and_samples(alice, tmp_path):
    from charlm.checkpoint import restore
    from charlm.sampling import generate

    result, lines = run(alice, tmp_path, cell="rnn", input_encoding="embed", epochs=2, learning_rate=1e-2)
    losses = [r["train_loss"] for r in result.history]
    assert "RNN" in lines[3] and losses[1] < losses[0]
    state, cfg, vocab, _ = restore(tmp_path)
    assert set(state.params) == {"embed", "rnn_0", "output"} and state.params["rnn_0"]["recurrent_kernel"].shape == (16, 16)
    text = generate(state.params, cfg, vocab, "alice", length=80, temperature=0.8, seed=1)[0]
    assert len(text) == 80 and set(text) <= set(vocab.chars)


def test_strip_punctuation_and_gru_and_input_dropout_train(alice, tmp_path):
    result, lines = run(alice, tmp_path, strip_punctuation=True, cell="gru", input_dropout=0.2, epochs=1)
    assert "Total Vocab: 30" in lines and "GRU" in lines[3]  # 40 chars less 10 punctuation marks


def test_tutorial_objective_is_validated_on_the_char_after_each_window(alice, tmp_path):
    result, lines = run(alice, tmp_path, val_frac=0.2, epochs=1)
    assert any("train loss (last-char)" in l and "val loss (last-char)" in l for l in lines)


def test_max_time_fits_a_decaying_schedule_to_the_budget(alice, tmp_path):
    result, lines = run(alice, tmp_path, epochs=500, max_time=0.25, objective="all", lr_schedule="cosine")
    fitted = next(l for l in lines if l.startswith("Fitted the cosine lr schedule to the time budget"))
    steps = int(fitted.split(": ")[1].split()[0])
    assert steps < 500 * 296
    from charlm.checkpoint import read_meta
    assert read_meta(tmp_path)["total_steps"] == steps  # the best epoch came after the fit


def test_early_stopping_ends_the_run_patience_epochs_after_the_best(tmp_path):
    """Train on a repeated phrase, validate on unrelated chars: the val loss soon only rises."""
    rng = __import__("numpy").random.default_rng(0)
    text = "abcdefgh " * 200 + "".join(rng.choice(list("abcdefgh "), 450))
    result, lines = run(text, tmp_path, val_frac=0.2, objective="all", epochs=30, learning_rate=1e-2, patience=2)
    best_epoch = min(result.history, key=lambda r: r["val_loss"])["epoch"]
    assert len(result.history) == best_epoch + 2 < 30
    assert any(l.startswith("Early stopping: val loss (stream) has not improved for 2 epochs") for l in lines)
