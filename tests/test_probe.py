"""charlm.probe and charlm.inspect: the trace against the scorer, the model and a NumPy run of
each cell; unit ranking on planted units; the hypotheses; the report and its command line."""

import json

import jax
import numpy as np
import pytest

from charlm import probe
from charlm.config import ModelConfig, make_run_config
from charlm.data import Vocab
from charlm.errors import CharlmError
from charlm.model import CharLSTM, init_params
from charlm.scoring import stream_nll

V = 11
CASES = {  # every cell, encoding and a stack, on random weights
    "lstm-onehot-2layers": ModelConfig(vocab_size=V, hidden=8, layers=2, cell="lstm", input_encoding="onehot"),
    "gru-embed": ModelConfig(vocab_size=V, hidden=8, cell="gru", input_encoding="embed", embed_dim=6),
    "rnn-scaled": ModelConfig(vocab_size=V, hidden=8, cell="rnn", input_encoding="scaled"),
}


def random_ids(n=300, seed=0):
    return np.random.default_rng(seed).integers(0, V, n).astype(np.int32)


@pytest.mark.parametrize("name", CASES)
def test_surprisals_add_up_to_the_stream_nll_and_guesses_are_the_softmax(name):
    cfg = CASES[name]
    params = init_params(cfg, jax.random.key(1))
    ids = random_ids()
    tr = probe.trace(params, cfg, ids, bucket=128)
    assert np.isnan(tr.surprisal_bits[0]) and np.isfinite(tr.surprisal_bits[1:]).all()
    nats = stream_nll(params, cfg, ids)
    np.testing.assert_allclose(np.sum(tr.surprisal_bits[1:]) * np.log(2), np.sum(nats), rtol=1e-5)
    np.testing.assert_allclose(tr.surprisal_bits[1:] * np.log(2), nats, atol=1e-4)
    logits = np.asarray(CharLSTM(cfg).apply({"params": params}, ids[None])[0][0], np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(tr.guess_ids, top)
    np.testing.assert_allclose(tr.guess_probs, np.take_along_axis(probs, top, 1), atol=1e-5)


def numpy_run(params, cfg: ModelConfig, ids):
    """Each cell step by step in NumPy float64, as the papers write it."""
    sig = lambda z: 1 / (1 + np.exp(-z))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    if cfg.input_encoding == "onehot":
        xs = np.eye(V)[ids]
    elif cfg.input_encoding == "scaled":
        xs = (ids / V)[:, None]
    else:
        xs = p["embed"]["embedding"][ids]
    layers = []
    for layer in range(cfg.layers):
        q, H = p[f"{cfg.cell}_{layer}"], cfg.hidden
        h, c, out = np.zeros(H), np.zeros(H), {k: [] for k in ("h", "c", *probe.GATE_NAMES[cfg.cell])}
        for x in xs:
            zx, zh = x @ q["input_kernel"] + q["bias"], h @ q["recurrent_kernel"]
            if cfg.cell == "lstm":
                i, f, g, o = sig(zx[:H] + zh[:H]), sig(zx[H:2*H] + zh[H:2*H]), np.tanh(zx[2*H:3*H] + zh[2*H:3*H]), sig(zx[3*H:] + zh[3*H:])
                c = f * c + i * g
                h = o * np.tanh(c)
                gates = dict(i=i, f=f, g=g, o=o, c=c)
            elif cfg.cell == "gru":
                zh = zh + q["recurrent_bias"]
                r, u = sig(zx[:H] + zh[:H]), sig(zx[H:2*H] + zh[H:2*H])
                n = np.tanh(zx[2*H:] + r * zh[2*H:])
                h = (1 - u) * n + u * h
                gates = dict(r=r, u=u, n=n)
            else:
                h = np.tanh(zx + zh)
                gates = {}
            for k, v in {"h": h, **gates}.items():
                out[k].append(v)
        layers.append({k: np.array(v) for k, v in out.items() if v})
        xs = layers[-1]["h"]
    return layers


@pytest.mark.parametrize("name", CASES)
def test_states_and_gates_equal_a_numpy_run_of_the_cell(name):
    cfg = CASES[name]
    params = init_params(cfg, jax.random.key(2))
    ids = random_ids(40, seed=3)
    tr = probe.trace(params, cfg, ids, bucket=64)
    ref = numpy_run(params, cfg, ids)
    assert [set(layer) for layer in tr.layers] == [set(layer) for layer in ref]
    for ours, theirs in zip(tr.layers, ref):
        for k in theirs:
            np.testing.assert_allclose(ours[k], theirs[k], atol=2e-5, err_msg=k)
    names, acts = tr.units()
    assert acts.shape == (40, len(names)) and names[0] == "L1.h0"
    assert ("L2.c7" in names) == (name == "lstm-onehot-2layers")


def test_unit_ranking_finds_a_planted_unit_and_auc_is_one_on_a_separator_and_half_on_noise():
    rng = np.random.default_rng(0)
    N, U = 4000, 50
    chosen = rng.random(N) < 0.2
    acts = rng.normal(size=(N, U))
    acts[:, 17] += 1.5 * chosen      # a unit that tracks the positions, not perfectly
    acts[:, 30] = np.where(chosen, -2.0, 2.0) + 0.1 * rng.normal(size=N)  # a perfect one, the other way round
    ranked = probe.rank_units(acts, chosen, top=3)
    assert [s.unit for s in ranked[:2]] == [30, 17]
    assert ranked[0].auc == 0.0 and ranked[0].separation == 1.0 and ranked[0].effect < -10
    aucs = probe.auc_per_unit(acts, chosen)
    noise = np.delete(aucs, [17, 30])
    assert np.all(np.abs(noise - 0.5) < 0.05)
    assert probe.auc_per_unit(np.where(chosen, 1.0, 0.0)[:, None], chosen)[0] == 1.0
    assert probe.auc_per_unit(np.zeros((N, 1)), chosen)[0] == 0.5  # ties count half
    # among: vowels compared with consonants only
    among = rng.random(N) < 0.5
    within = probe.rank_units(acts, chosen, among, top=1)[0]
    assert within.unit == 30


def test_hypotheses_mark_the_chars_they_name():
    text = 'he said "no (not yet)" and\nleft. "ok"'
    found = {h.name: h for h in probe.hypotheses(text)}
    marked = lambda name: "".join(c if m else "_" for c, m in zip(text, found[name].chosen))
    assert marked("inside quotes").replace("_", "") == '"no (not yet)"ok'  # the opening mark in, the closing one out
    assert marked("inside parentheses").replace("_", "") == "(not yet" and not found["inside parentheses"].chosen[-1]
    assert marked("just after a newline").replace("_", "") == "l" and text[found["just after a newline"].chosen.argmax() - 1] == "\n"
    assert marked("start of a word").replace("_", "") == "hsnnyalo"
    vowels = found["vowel (among letters)"]
    assert vowels.chosen[text.index("e")] and not vowels.among[text.index(" ")]
    assert "inside parentheses" not in {h.name for h in probe.hypotheses("no brackets here\nat all")}
    alice = "'don't,' said alice's sister. 'no!'"  # straight single quotes; apostrophes are not quotes
    quoted = probe.hypotheses(alice)[0]
    assert quoted.name == "inside quotes"
    assert "".join(c if m else "_" for c, m in zip(alice, quoted.chosen)).replace("_", "") == "'don't,'no!"


def test_saturation_counts_gates_below_and_above():
    cfg = CASES["lstm-onehot-2layers"]
    tr = probe.trace(init_params(cfg, jax.random.key(0)), cfg, random_ids(100), bucket=128)
    sat = probe.saturation(tr, "lstm")
    assert len(sat) == 2 and set(sat[0]) == {"i", "f", "o"}
    np.testing.assert_allclose(sat[1]["f"]["high"], (tr.layers[1]["f"] > 0.9).mean(0))
    assert probe.saturation(tr, "rnn") == [{}, {}]


def report_for(cell="gru", text="alice said \"hello (twice)\"\nand left. " * 8, **kw):
    from charlm.inspect import encode_text, inspection

    vocab = Vocab.from_text(text + "z")
    cfg = make_run_config(hidden=8, cell=cell, input_encoding="embed", vocab_size=vocab.size)
    params = init_params(cfg.model, jax.random.key(0))
    return inspection(params, cfg, vocab, encode_text(text, vocab, cfg, 5000), **kw), (params, cfg, vocab)


def test_the_report_holds_per_char_numbers_units_and_a_span_ranking():
    report, (params, cfg, vocab) = report_for(span=(12, 17), units=["L1.h3"])
    n = len(report["chars"])
    assert len(report["surprisal_bits"]) == len(report["guesses"]) == n and report["surprisal_bits"][0] is None
    assert all(len(g) == 5 for g in report["guesses"]) and abs(sum(p for _, p in report["guesses"][0]) - 1) < 1
    assert {h["name"] for h in report["hypotheses"]} >= {"inside quotes", "inside parentheses", "start of a word"}
    assert len(report["span"]["top"]) == 8 == report["model"]["units"] and report["span"]["start"] == 12  # all 8 ranked
    shown = {u["unit"] for h in report["hypotheses"] for u in h["top"]} | {u["unit"] for u in report["span"]["top"]}
    assert set(report["activations"]) == shown | {"L1.h3"} and all(len(a) == n for a in report["activations"].values())
    assert set(report["saturation"][0]["gates"]) == {"r", "u"}
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN
    with pytest.raises(CharlmError, match="no unit 'L9.h0'"):
        report_for(units=["L9.h0"])
    with pytest.raises(CharlmError, match="span must be part of the text"):
        report_for(span=(5, 5))


def test_text_the_model_cannot_read_gets_a_message():
    from charlm.inspect import encode_text

    vocab = Vocab.from_text("abc \n")
    cfg = make_run_config(vocab_size=vocab.size)
    with pytest.raises(CharlmError, match="not in the model's vocabulary: '€'"):
        encode_text("abc€", vocab, cfg, 100)
    with pytest.raises(CharlmError, match="the limit is 3"):
        encode_text("abcabc", vocab, cfg, 3)
    assert list(encode_text("ABC", vocab, cfg, 10)) == list(vocab.encode("abc"))  # cleaned as in training


def test_charlm_inspect_writes_a_self_contained_report_and_json(trained_run, tmp_path, capsys):
    from charlm.inspect import main

    _, text_path, ck, _ = trained_run
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    assert main(["--ckpt", str(ck), "--text", str(text_path), "--limit", "600", "--html", str(html),
                 "--json", str(js), "--units"]) == 0
    out = capsys.readouterr().out
    assert "bits/char" in out and "start of a word" in out and "Wrote" in out
    report = json.loads(js.read_text())
    page = html.read_text()
    assert len(report["chars"]) == 600 and '"bits_per_char"' in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # nothing from the network
    with pytest.raises(SystemExit) as stopped:
        main(["--ckpt", str(ck), "--text", str(text_path), "--limit", "1"])
    assert stopped.value.code == 2 and "--limit must be between 2 and 20000" in capsys.readouterr().err
