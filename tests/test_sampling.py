import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm.config import make_run_config
from charlm.errors import CharlmError
from charlm.model import CharLSTM
from charlm.checkpoint import restore
from charlm.trainer import train
from charlm.beam import beam_generate
from charlm.config import SamplingSettings
from charlm.logits import Plan, choose, empty_history, remember_prime, truncate, values_of
from charlm.sampling import generate, generate_stateful, generate_window, stream

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


def _pick(logits, key, temperature, top_k=None, top_p=None, **anti_loop):
    settings = SamplingSettings(temperature, top_k, top_p, **anti_loop)
    logits = jnp.asarray(logits, jnp.float32)
    history = empty_history(Plan.of(settings), logits.shape[0], 1)
    return choose(logits, history, key, Plan.of(settings), values_of(settings))


def test_argmax_temperature_and_top_k():
    logits = jnp.log(jnp.asarray([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    assert _pick(logits, jax.random.key(0), 0.0).tolist() == [1, 0]
    draws = np.stack([_pick(logits, jax.random.key(i), 1.0, 1) for i in range(50)])
    assert (draws == [1, 0]).all(), "top-1 sampling is argmax"
    draws = np.stack([_pick(logits, jax.random.key(i), 1.0, 2) for i in range(300)])
    assert set(draws[:, 0]) == {1, 2} and set(draws[:, 1]) == {0, 2}
    freq = (np.stack([_pick(logits, jax.random.key(i), 1.0) for i in range(2000)])[:, 0] == 1).mean()
    assert abs(freq - 0.6) < 0.05
    cold = (np.stack([_pick(logits, jax.random.key(i), 0.25) for i in range(500)])[:, 0] == 1).mean()
    assert cold > 0.9, "low temperature sharpens towards the argmax"


@pytest.mark.parametrize("top_p, kept", [(0.5, [0]), (0.51, [0, 1]), (0.8, [0, 1]), (0.81, [0, 1, 2]),
                                          (0.95, [0, 1, 2]), (0.96, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])])
@pytest.mark.parametrize("pairwise", [True, False], ids=["pairwise", "sorted"])
def test_top_p_keeps_the_smallest_set_that_reaches_p(top_p, kept, pairwise, monkeypatch):
    import charlm.logits
    if not pairwise:
        monkeypatch.setattr(charlm.logits, "PAIRWISE_MAX_VOCAB", 0)  # the large-vocabulary path
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    order = [2, 0, 3, 1]  # the vocab order is not the probability order
    logits = np.log(probs[:, order])
    settings = SamplingSettings(1.0, top_p=top_p)
    out = truncate(jnp.asarray(logits, jnp.float32), Plan.of(settings), values_of(settings))
    assert sorted(order[r] for r in np.flatnonzero(np.isfinite(np.asarray(out[0])))) == kept
    # with top-k first, p applies to what k kept (renormalised): 0.5/0.8 >= 0.6
    both = SamplingSettings(1.0, top_k=2, top_p=0.6)
    out = truncate(jnp.asarray(logits, jnp.float32), Plan.of(both), values_of(both))
    assert np.isfinite(np.asarray(out[0])).sum() == 1


def _history(settings, text_ids, generated=()):
    """The History after a prime of `text_ids` and `generated` ids, as the sampler builds it."""
    from charlm.logits import remember
    plan, values = Plan.of(settings), values_of(settings)
    ids = jnp.asarray([text_ids], jnp.int32)
    h = remember_prime(empty_history(plan, 1, 64), ids, jnp.ones(ids.shape, bool), values)
    for i in generated:
        h = remember(h, jnp.asarray([i], jnp.int32), values)
    return h


def test_repetition_penalty_changes_the_argmax_as_ctrl_does():
    settings = SamplingSettings(0.0, repetition_penalty=2.0, penalty_window=3)
    plan, values = Plan.of(settings), values_of(settings)
    logits = jnp.asarray([[3.0, 2.0, -1.0, -1.5]])
    # 0 was generated 4 chars ago (outside the window of 3), 1 and 2 within it
    h = _history(settings, [0], generated=[0, 1, 2, 2])
    from charlm.logits import shape_logits
    np.testing.assert_allclose(np.asarray(shape_logits(logits, h, plan, values)), [[3.0, 1.0, -2.0, -1.5]])
    h = _history(settings, [3], generated=[0])  # the prime is not penalised; a generated 0 is
    assert choose(logits, h, jax.random.key(0), plan, values).tolist() == [1]
    assert choose(logits, _history(settings, [0]), jax.random.key(0), plan, values).tolist() == [0]


def test_no_repeat_ngram_bans_exactly_the_chars_that_complete_a_seen_ngram():
    from charlm.logits import repeated_ngram_ends
    settings = SamplingSettings(0.0, no_repeat_ngram=3)
    # text "abcab": the last 2 ids "ab" were followed by "c" once -> only "c" is banned
    h = _history(settings, [0, 1, 2, 0, 1])
    assert np.asarray(repeated_ngram_ends(h, 4, values_of(settings)["ngram"]))[0].tolist() == [0, 0, 1, 0]
    h = _history(settings, [0, 1, 0, 1, 3, 0, 1])  # "ab" followed by "a" and by "d"
    assert np.asarray(repeated_ngram_ends(h, 4, values_of(settings)["ngram"]))[0].tolist() == [1, 0, 0, 1]
    h = _history(settings, [0, 1, 2], generated=[3, 1, 1])  # prime + generated: "abcdbb", no "bb?" seen
    assert not np.asarray(repeated_ngram_ends(h, 4, values_of(settings)["ngram"])).any()
    logits = jnp.asarray([[0.0, 0.0, 5.0, 4.0]])
    h = _history(settings, [0, 1, 2, 0, 1])
    assert choose(logits, h, jax.random.key(0), Plan.of(settings), values_of(settings)).tolist() == [3]
    # a brute-force check on a random text, n = 2..5
    rng = np.random.default_rng(0)
    text = rng.integers(0, 3, size=40).tolist()
    for n in range(2, 6):
        s = SamplingSettings(0.0, no_repeat_ngram=n)
        got = np.asarray(repeated_ngram_ends(_history(s, text), 3, values_of(s)["ngram"]))[0]
        tail = text[len(text) - n + 1:]
        want = {text[j + n - 1] for j in range(len(text) - n + 1) if text[j:j + n - 1] == tail}
        assert set(np.flatnonzero(got)) == want, n


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
    apply = jax.jit(lambda window: CharLSTM(cfg.model).apply({"params": params}, window, last_only=True))
    for _ in range(2 * L):
        window = jnp.asarray(np.asarray(context[-L:], np.int32)[None])
        logits, _ = apply(window)  # one compile per window length (at most L)
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
    ({"temperature": -0.5}, r"temperature must be a number in \[0, 100\]"),
    ({"top_p": 1.5}, "top_p"),
    ({"no_repeat_ngram": 1}, "no_repeat_ngram must be at least 2"),
    ({"top_q": 1}, "unexpected keyword"),
    ({"num_samples": 0}, "num_samples"),
    ({"top_k": 0}, "top_k"),
    ({"context": "sliding"}, "context must be one of"),
])
def test_generate_bad_arguments(model, kwargs, message):
    params, cfg, vocab = model
    args = {"prime": "alice", **kwargs}
    with pytest.raises(CharlmError, match=message):
        generate(params, cfg, vocab, args.pop("prime"), **args)


MODES = [SamplingSettings(), SamplingSettings(0.9, top_k=5), SamplingSettings(1.0, top_p=0.8),
         SamplingSettings(0.7, repetition_penalty=1.5, penalty_window=8), SamplingSettings(1.0, no_repeat_ngram=4)]


@pytest.mark.parametrize("settings", MODES, ids=["argmax", "top-k", "top-p", "penalty", "no-repeat"])
def test_streaming_equals_one_call_and_the_seed_decides(model, settings):
    params, cfg, vocab = model
    one = generate(params, cfg, vocab, "alice", settings, length=70, seed=5, num_samples=2)
    pieces = list(stream(params, cfg, vocab, "alice", settings, length=70, seed=5, num_samples=2, chunk=16))
    assert len(pieces) == 5 and ["".join(p[i] for p in pieces) for i in range(2)] == one
    assert generate(params, cfg, vocab, "alice", settings, length=70, seed=5, num_samples=2) == one
    if not settings.greedy:
        assert generate(params, cfg, vocab, "alice", settings, length=70, seed=6, num_samples=2) != one


def test_no_repeat_ngram_output_has_no_repeated_ngram(model):
    params, cfg, vocab = model
    text = "alice" + generate(params, cfg, vocab, "alice", length=120, no_repeat_ngram=5)[0]
    grams = [text[i:i + 5] for i in range(len(text) - 4)]
    assert len(grams) == len(set(grams))


def test_stop_cuts_at_the_first_occurrence(model):
    params, cfg, vocab = model
    full = generate(params, cfg, vocab, "alice", length=80)[0]
    first = next(i for i in range(5, 70) if full.index(full[i:i + 3]) == i)  # a late first occurrence
    stop = full[first:first + 3]
    assert generate(params, cfg, vocab, "alice", length=80, stop=[stop])[0] == full[:first]
    assert generate(params, cfg, vocab, "alice", length=80, stop=["#never#", stop], keep_stop=True)[0] == \
        full[:first + 3]
    # streamed in small chunks, a stop string split across two chunks is still found, and nothing past it shows
    pieces = [p[0] for p in stream(params, cfg, vocab, "alice", length=80, stop=[stop], chunk=first + 1)]
    assert "".join(pieces) == full[:first] and len(pieces) <= 2
    assert generate(params, cfg, vocab, "alice", length=80, stop=["#never#"])[0] == full


def _sequence_logprob(params, cfg, vocab, prime, text):
    ids = np.concatenate([vocab.encode(prime), vocab.encode(text)])[None]
    logits, _ = CharLSTM(cfg.model).apply({"params": params}, jnp.asarray(ids[:, :-1]))
    logp = jax.nn.log_softmax(logits[0, len(prime) - 1:], axis=-1)
    return float(jnp.take_along_axis(logp, jnp.asarray(ids[0, len(prime):, None]), axis=-1).sum())


def test_beam_search(model):
    params, cfg, vocab = model
    greedy = generate(params, cfg, vocab, "alice", length=40)[0]
    (one, score), = beam_generate(params, cfg, vocab, "alice", beams=1, length=40)
    assert one == greedy and beam_generate(params, cfg, vocab, "alice", beams=1, length=40) == [(one, score)]
    assert score == pytest.approx(_sequence_logprob(params, cfg, vocab, "alice", greedy) / 40, abs=1e-4)
    for prime in ("alice", "sister on", "the bank"):
        g = _sequence_logprob(params, cfg, vocab, prime, generate(params, cfg, vocab, prime, length=40)[0])
        beams = beam_generate(params, cfg, vocab, prime, beams=4, length=40, num_samples=4)
        assert [s for _, s in beams] == sorted((s for _, s in beams), reverse=True) and len({t for t, _ in beams}) == 4
        assert beams[0][1] * 40 >= g - 1e-4, "beam search never ends below argmax here"
        assert beams[0][1] == pytest.approx(_sequence_logprob(params, cfg, vocab, prime, beams[0][0]) / 40, abs=1e-4)
    with pytest.raises(CharlmError, match="deterministic"):
        beam_generate(params, cfg, vocab, "alice", SamplingSettings(0.5), beams=2, length=5)
    text, _ = beam_generate(params, cfg, vocab, "alice", SamplingSettings(no_repeat_ngram=4), beams=3, length=60)[0]
    grams = [("alice" + text)[i:i + 4] for i in range(len(text) + 2)]
    assert len(grams) == len(set(grams))


def test_precision_overrides_the_trained_one():
    from charlm.data import Vocab
    from charlm.model import init_params
    from charlm.sampling import sampling_model

    vocab = Vocab.from_text(TEXT)
    cfg = make_run_config(hidden=16, precision="bfloat16", vocab_size=vocab.size, input_encoding="onehot")
    params = init_params(cfg.model, jax.random.key(0))
    assert sampling_model(cfg.model).precision == "bfloat16"
    assert sampling_model(cfg.model, "float32").precision == "float32"
    f32 = make_run_config(hidden=16, precision="float32", vocab_size=vocab.size, input_encoding="onehot")
    as_f32 = generate(params, cfg, vocab, "alice", length=30, temperature=1.0, seed=1, precision="float32")
    assert as_f32 == generate(params, f32, vocab, "alice", length=30, temperature=1.0, seed=1)
    assert len(generate(params, cfg, vocab, "alice", length=30)[0]) == 30
