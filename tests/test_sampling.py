import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm.config import make_run_config
from charlm.errors import CharlmError
from charlm.model import CharLSTM
from charlm.checkpoint import restore
from charlm.trainer import train
from charlm.sampling import generate, generate_stateful, generate_window, sample_next

TEXT = "alice was beginning to get very tired of sitting by her sister on the bank. " * 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A briefly trained 2-layer model, so that what it predicts depends on the context."""
    cfg = make_run_config(hidden=24, layers=2, seq_length=12, batch_size=32, epochs=10, learning_rate=1e-2,
                          input_encoding="onehot", dropout=0.0)
    run_dir = tmp_path_factory.mktemp("run")
    train(TEXT, cfg, run_dir, log=lambda s: None, progress=False)
    state, cfg, vocab, _ = restore(run_dir)
    assert len(set(generate(state.params, cfg, vocab, "alice", length=60)[0])) > 3, "model output too uniform"
    return state.params, cfg, vocab


def test_sample_next_argmax_temperature_and_top_k():
    logits = jnp.log(jnp.asarray([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    assert sample_next(logits, jax.random.key(0), 0.0, None).tolist() == [1, 0]
    draws = np.stack([sample_next(logits, jax.random.key(i), 1.0, 1) for i in range(50)])
    assert (draws == [1, 0]).all(), "top-1 sampling is argmax"
    draws = np.stack([sample_next(logits, jax.random.key(i), 1.0, 2) for i in range(300)])
    assert set(draws[:, 0]) == {1, 2} and set(draws[:, 1]) == {0, 2}
    freq = (np.stack([sample_next(logits, jax.random.key(i), 1.0, None) for i in range(2000)])[:, 0] == 1).mean()
    assert abs(freq - 0.6) < 0.05
    cold = (np.stack([sample_next(logits, jax.random.key(i), 0.25, None) for i in range(500)])[:, 0] == 1).mean()
    assert cold > 0.9, "low temperature sharpens towards the argmax"


def test_stateful_priming_equals_the_full_window(model):
    """After priming with 100 chars, the sampler's first pick is the argmax of the window's last logits."""
    params, cfg, vocab = model
    prime = vocab.encode((TEXT * 2)[:100])[None]
    logits, _ = CharLSTM(cfg.model).apply({"params": params}, jnp.asarray(prime))
    ids = generate_stateful(params, cfg.model, jnp.asarray(prime), jax.random.key(0), length=5)
    assert int(ids[0, 0]) == int(jnp.argmax(logits[0, -1]))
    # and each next char is the argmax after feeding the previous ones
    extended = np.concatenate([prime, np.asarray(ids)[:, :4]], axis=1)
    logits, _ = CharLSTM(cfg.model).apply({"params": params}, jnp.asarray(extended))
    assert np.asarray(ids)[0].tolist() == np.asarray(jnp.argmax(logits[0, -5:], axis=-1)).tolist()


def test_window_and_stateful_agree_on_the_first_char(model):
    params, cfg, vocab = model
    prime = jnp.asarray(vocab.encode(TEXT[:cfg.data.seq_length])[None])
    a = generate_stateful(params, cfg.model, prime, jax.random.key(0), length=3)
    b = generate_window(params, cfg.model, prime, jax.random.key(0), length=3, seq_length=cfg.data.seq_length)
    assert int(a[0, 0]) == int(b[0, 0])


def test_window_mode_forgets_beyond_seq_length(model):
    """Window mode sees only the last seq_length chars: a longer prime with the same tail gives the same text."""
    params, cfg, vocab = model
    L = cfg.data.seq_length
    tail = vocab.encode(TEXT[5:5 + L])
    long_prime = jnp.asarray(np.concatenate([vocab.encode("her sister on "), tail])[None])
    a = generate_window(params, cfg.model, long_prime, jax.random.key(0), length=20, seq_length=L)
    b = generate_window(params, cfg.model, jnp.asarray(tail[None]), jax.random.key(0), length=20, seq_length=L)
    np.testing.assert_array_equal(a, b)


def test_window_mode_matches_the_tutorials_loop(model):
    """The tutorial's generator, written as a Python loop: each char is the argmax of a zero-state
    run over the last seq_length chars (fewer while a short prime has not filled the window)."""
    params, cfg, vocab = model
    L = cfg.data.seq_length
    context = list(vocab.encode("alice"))
    expected = []
    for _ in range(2 * L):
        window = jnp.asarray(np.asarray(context[-L:], np.int32)[None])
        logits, _ = CharLSTM(cfg.model).apply({"params": params}, window, last_only=True)
        expected.append(int(jnp.argmax(logits[0])))
        context.append(expected[-1])
    ids = generate_window(params, cfg.model, jnp.asarray(vocab.encode("alice")[None]), jax.random.key(0),
                          length=2 * L, seq_length=L)
    assert np.asarray(ids)[0].tolist() == expected


def test_generate_lengths_samples_and_reproducibility(model):
    params, cfg, vocab = model
    out = generate(params, cfg, vocab, "Alice", length=40, temperature=1.0, seed=3, num_samples=4)
    assert len(out) == 4 and all(len(t) == 40 for t in out)
    assert len(set(out)) > 1, "batched samples are independent draws"
    assert out == generate(params, cfg, vocab, "Alice", length=40, temperature=1.0, seed=3, num_samples=4)
    assert out != generate(params, cfg, vocab, "Alice", length=40, temperature=1.0, seed=4, num_samples=4)
    greedy = generate(params, cfg, vocab, "alice", length=30, num_samples=3)
    assert len(set(greedy)) == 1, "argmax is deterministic"
    windowed = generate(params, cfg, vocab, "alice", length=30, context="window")
    assert len(windowed[0]) == 30


@pytest.mark.parametrize("kwargs, message", [
    ({"prime": "alice€#"}, r"prime text contains 2 char\(s\) not in the model's vocabulary: '#', '€'"),
    ({"prime": ""}, "prime text is empty"),
    ({"length": 0}, "length must be a positive integer"),
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"num_samples": 0}, "num_samples"),
    ({"top_k": 0}, "top_k"),
    ({"context": "sliding"}, "context must be one of"),
])
def test_generate_bad_arguments(model, kwargs, message):
    params, cfg, vocab = model
    args = {"prime": "alice", **kwargs}
    with pytest.raises(CharlmError, match=message):
        generate(params, cfg, vocab, args.pop("prime"), **args)
