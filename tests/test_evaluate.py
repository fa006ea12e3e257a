import math

import jax
import numpy as np
import pytest

from charlm.config import ModelConfig, make_run_config
from charlm.evaluate import Score, dynamic_nll, last_window_nll, nats_to_bits, stream_nll
from charlm.model import CharLSTM, init_params
from charlm.trainer import train

V, H = 6, 16


@pytest.fixture(scope="module")
def random_model():
    cfg = ModelConfig(vocab_size=V, hidden=H, input_encoding="onehot")
    params = jax.tree.map(lambda p: 2 * p, init_params(cfg, jax.random.key(0)))
    return params, cfg


def test_nats_bits_perplexity():
    s = Score.from_nll(np.full(10, math.log(2)))
    assert (s.bits_per_char, s.perplexity, s.chars) == (pytest.approx(1.0), pytest.approx(2.0), 10)
    assert nats_to_bits(math.log(8)) == pytest.approx(3.0)


def test_stream_nll_matches_one_full_forward(random_model):
    params, cfg = random_model
    tokens = np.random.default_rng(0).integers(0, V, 700).astype(np.int32)
    nll = stream_nll(params, cfg, tokens, segment=64)  # 11 segments, the state carried across
    logits, _ = CharLSTM(cfg).apply({"params": params}, tokens[None, :-1])
    full = -jax.nn.log_softmax(logits[0])[np.arange(699), tokens[1:]]
    assert nll.shape == (699,)
    np.testing.assert_allclose(nll, full, rtol=1e-4, atol=1e-5)


def test_context_warms_up_the_state_and_is_not_scored(random_model):
    params, cfg = random_model
    tokens = np.random.default_rng(1).integers(0, V, 300).astype(np.int32)
    tail = stream_nll(params, cfg, tokens[200:], context=tokens[:200], segment=64)
    whole = stream_nll(params, cfg, tokens, segment=64)
    assert tail.shape == (100,)
    np.testing.assert_allclose(tail, whole[199:], rtol=1e-4, atol=1e-5)


def test_last_window_metric_is_the_tutorials(random_model):
    params, cfg = random_model
    tokens = np.random.default_rng(2).integers(0, V, 40).astype(np.int32)
    nll = last_window_nll(params, cfg, tokens, seq_length=10, batch_size=8)
    expected = []
    for s in range(30):
        logits, _ = CharLSTM(cfg).apply({"params": params}, tokens[None, s:s + 10], last_only=True)
        expected.append(float(-jax.nn.log_softmax(logits[0])[tokens[s + 10]]))
    np.testing.assert_allclose(nll, expected, rtol=1e-4, atol=1e-5)


def test_dynamic_evaluation_scores_each_char_before_training_on_it(random_model):
    """A text of one segment repeated: the first copy scores exactly as static evaluation (a leak
    of the update into its own segment would change it); later copies are scored by adapted params."""
    params, cfg = random_model
    segment = np.random.default_rng(3).integers(0, V, 40).astype(np.int32)
    text = np.concatenate([segment, segment, segment])
    context = np.random.default_rng(4).integers(0, V, 10).astype(np.int32)
    static = stream_nll(params, cfg, text, context=context, segment=40)
    dynamic = dynamic_nll(params, cfg, text, context=context, segment=40, lr=0.5)
    np.testing.assert_allclose(dynamic[:40], static[:40], rtol=1e-5, atol=1e-6)
    assert np.abs(dynamic[40:80] - static[40:80]).max() > 0.05, "the update after the first segment took effect"
    # the caller's params are untouched
    np.testing.assert_allclose(stream_nll(params, cfg, text, context=context, segment=40), static)


def test_memorised_text_scores_near_zero_bits(tmp_path):
    text = "abcdefgh " * 300
    cfg = make_run_config(hidden=32, seq_length=8, batch_size=16, dropout=0.0, epochs=15, learning_rate=1e-2,
                          input_encoding="onehot", objective="all", stateful=True)
    train(text, cfg, tmp_path / "ck", log=lambda s: None, progress=False)
    from charlm.checkpoint import restore
    state, cfg, vocab, _ = restore(tmp_path / "ck")
    score = Score.from_nll(stream_nll(state.params, cfg.model, vocab.encode(text[:900]), context=None))
    assert score.bits_per_char < 0.1 and score.chars == 899
