"""charlm-export: the single-file page, opened from file:// in headless Chromium, writes Python's
argmax text for every cell, encoding and a stack; bad primes get their message; Stop stops."""

import json

import numpy as np
import pytest

from charlm.config import make_run_config
from charlm.trainer import train

TEXT = ("alice was beginning to get very tired of sitting by her sister on the bank, and of having "
        "nothing to do: once or twice she had peeped into the book her sister was reading. ") * 3

NETS = {  # every cell, every input encoding, one and two layers
    "lstm-onehot": dict(cell="lstm", input_encoding="onehot"),
    "gru-embed": dict(cell="gru", input_encoding="embed"),
    "rnn-scaled-2layers": dict(cell="rnn", input_encoding="scaled", layers=2),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from charlm.export import export

    pages = {}
    for name, net in NETS.items():
        run_dir = tmp_path_factory.mktemp(name)
        cfg = make_run_config(hidden=16, seq_length=10, batch_size=32, epochs=2, learning_rate=1e-2, **net)
        train(TEXT, cfg, run_dir, log=lambda s: None, progress=False)
        page, info = export(str(run_dir))
        path = run_dir / "model.html"
        path.write_text(page, encoding="utf-8")
        pages[name] = (run_dir, path, info)
    return pages


def test_the_file_holds_everything_and_says_what(exported):
    _, path, info = exported["gru-embed"]
    page = path.read_text(encoding="utf-8")
    assert "<script src" not in page and "http://" not in page and "https://" not in page
    model = json.loads(page.split("const MODEL = ", 1)[1].split(";\n", 1)[0])
    assert model["cell"] == "gru" and model["dtype"] == info["dtype"] in ("float16", "float32")
    assert set(model["weights"]) == {"embed/embedding", "gru_0/input_kernel", "gru_0/recurrent_kernel", "gru_0/bias",
                                     "gru_0/recurrent_bias", "output/kernel", "output/bias"}
    assert model["card"]["epochs"] == 2 and model["seeds"]


def test_weights_are_16_bit_only_where_the_argmax_text_stays_the_same(exported, monkeypatch):
    from charlm import export as export_module
    from charlm.checkpoint import restore

    run_dir, _, _ = exported["lstm-onehot"]
    state, cfg, vocab, meta = restore(run_dir)
    same = export_module.weight_dtype(state.params, cfg, vocab, meta["seeds"][:2])
    texts = iter([["a" * 10], ["b" * 10]])  # the rounded weights' text differs from the full ones'
    monkeypatch.setattr(export_module, "argmax_texts", lambda *a, **k: next(texts))
    assert same == "float16" and export_module.weight_dtype(state.params, cfg, vocab, ["x"]) == "float32"


def _page(browser, path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(path.as_uri())
    field = lambda name: browser.find_element(By.ID, name)
    return field, WebDriverWait(browser, 60, poll_frequency=0.05)


def _set(field, name, value):
    field(name).clear()
    field(name).send_keys(value)


def test_the_page_from_disk_writes_pythons_argmax_text(exported):
    from selenium.webdriver.common.by import By  # noqa: F401  (skips with the browser when selenium is missing)

    from charlm.checkpoint import restore
    from charlm.export import near_ties
    from charlm.sampling import generate
    from test_serve import _browser

    browser = _browser()
    try:
        for name, (run_dir, path, info) in exported.items():
            state, cfg, vocab, meta = restore(run_dir)
            prime = meta["seeds"][1]
            want = generate(state.params, cfg, vocab, prime, length=400, temperature=0.0)[0]
            # a near-tie between the two likeliest chars could flip between float32 and float64
            assert near_ties(state.params, cfg, vocab, prime, 400) == 0, f"{name}: a near-tie; pick another prime"
            field, wait = _page(browser, path)
            browser.execute_script("document.getElementById('prime').value = arguments[0]", prime)
            _set(field, "temperature", "0")
            _set(field, "length", "400")
            field("generate").click()
            wait.until(lambda b: "chars in" in field("status").text)
            assert field("generated").get_attribute("textContent") == want, (name, info)
        # a prime with chars outside the vocabulary, and bad settings, get their message
        field, wait = _page(browser, exported["lstm-onehot"][1])
        _set(field, "prime", "alice€")
        field("generate").click()
        wait.until(lambda b: "not in the model's vocabulary" in field("error").text)
        _set(field, "prime", "alice")
        _set(field, "temperature", "hot")
        field("generate").click()
        wait.until(lambda b: "temperature must be a number" in field("error").text)
        # Stop stops a long generation, and seeded sampling repeats itself
        _set(field, "temperature", "1")
        _set(field, "length", "1000000")
        field("generate").click()
        wait.until(lambda b: len(field("generated").get_attribute("textContent")) > 0)
        field("stop").click()
        wait.until(lambda b: field("status").text == "stopped")
        made = len(field("generated").get_attribute("textContent"))
        assert 0 < made < 1_000_000 and field("generate").is_enabled()
        _set(field, "length", "200")
        _set(field, "seed", "7")
        texts = []
        for _ in range(2):
            field("generate").click()
            wait.until(lambda b: "200 chars in" in field("status").text)
            texts.append(field("generated").get_attribute("textContent"))
        assert texts[0] == texts[1] and len(texts[0]) == 200
    finally:
        browser.quit()


def test_charlm_export_command(exported, tmp_path, capsys):
    from charlm.export import main

    run_dir, _, _ = exported["lstm-onehot"]
    out = tmp_path / "m.html"
    assert main(["--ckpt", str(run_dir), "--out", str(out), "--dtype", "float32"]) == 0
    assert "Wrote" in capsys.readouterr().out and '"dtype":"float32"' in out.read_text()
    assert main(["--ckpt", str(run_dir), "--out", str(tmp_path / "no" / "such" / "dir.html")]) == 2
    assert np.isfinite(out.stat().st_size)
