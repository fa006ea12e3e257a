import math

import jax
import numpy as np
import pytest

from charlm.config import DynamicSettings, ModelConfig, make_run_config
from charlm.scoring import Score, dynamic_nll, gradient_rms, last_window_nll, nats_to_bits, stream_nll
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
    sgd = DynamicSettings(method="sgd", lr=0.5, segment=40, adapt_chars=0)
    dynamic, adapted = dynamic_nll(params, cfg, text, context, sgd)
    assert adapted == 0
    np.testing.assert_allclose(dynamic[:40], static[:40], rtol=1e-5, atol=1e-6)
    assert np.abs(dynamic[40:80] - static[40:80]).max() > 0.05, "the update after the first segment took effect"
    # the caller's params are untouched
    np.testing.assert_allclose(stream_nll(params, cfg, text, context=context, segment=40), static)


@pytest.fixture(scope="module")
def rms_stats(random_model):
    params, cfg = random_model
    train_text = np.random.default_rng(5).integers(0, V, 3000).astype(np.int32)
    return train_text, gradient_rms(params, cfg, train_text, segment=20, segments=64)


def test_krause_dynamic_evaluation_never_scores_a_char_after_adapting_on_it(random_model, rms_stats):
    """Changing the text from char p on cannot change the score of any char before p's segment."""
    params, cfg = random_model
    before, rms = rms_stats
    text = np.random.default_rng(6).integers(0, V, 200).astype(np.int32)
    changed = text.copy()
    changed[130:] = (changed[130:] + 1) % V
    s = DynamicSettings(lr=0.05, decay=0.01, segment=20, adapt_chars=500)
    a, adapted = dynamic_nll(params, cfg, text, before, s, rms)
    b, _ = dynamic_nll(params, cfg, changed, before, s, rms)
    assert adapted == 500 and a.shape == (200,)
    # the adapted text (500 chars) is a multiple of the segment, so text[120:140] is one segment:
    # char 130 is its target 10, scored with params adapted on text[:120] only
    np.testing.assert_array_equal(a[:130], b[:130])
    assert not np.allclose(a[140:], b[140:])


@pytest.mark.parametrize("method", ["rms", "sgd"])
def test_dynamic_evaluation_with_lr_zero_is_static_evaluation(random_model, rms_stats, method):
    params, cfg = random_model
    before, rms = rms_stats
    text = np.random.default_rng(7).integers(0, V, 150).astype(np.int32)
    static = stream_nll(params, cfg, text, context=before[-1000:])
    dynamic, _ = dynamic_nll(params, cfg, text, before, DynamicSettings(method, lr=0.0, decay=0.1, adapt_chars=0), rms)
    np.testing.assert_allclose(dynamic, static, rtol=1e-5, atol=1e-6)


def test_krause_dynamic_evaluation_learns_a_repeated_segment(random_model, rms_stats):
    params, cfg = random_model
    before, rms = rms_stats
    # a segment unlike the statistics' uniform text (one char 80 % of the time), seen twice
    segment = np.random.default_rng(8).choice(V, 200, p=[.8, .04, .04, .04, .04, .04]).astype(np.int32)
    nll, _ = dynamic_nll(params, cfg, np.concatenate([segment, segment]), before,
                         DynamicSettings(lr=0.01, decay=0.001, segment=20, adapt_chars=0), rms)
    static = stream_nll(params, cfg, np.concatenate([segment, segment]), context=before[-1000:])
    first, second = nll[:200].mean(), nll[200:].mean()
    assert second < 0.75 * first and second < 0.75 * static[200:].mean(), (first, second)


def test_memorised_text_scores_near_zero_bits(tmp_path):
    text = "abcdefgh " * 300
    cfg = make_run_config(hidden=32, seq_length=8, batch_size=16, dropout=0.0, epochs=15, learning_rate=1e-2,
                          input_encoding="onehot", objective="all", stateful=True)
    train(text, cfg, tmp_path / "ck", log=lambda s: None, progress=False)
    from charlm.checkpoint import restore
    state, cfg, vocab, _ = restore(tmp_path / "ck")
    score = Score.from_nll(stream_nll(state.params, cfg.model, vocab.encode(text[:900]), context=None))
    assert score.bits_per_char < 0.1 and score.chars == 899
