"""The base model that ships with charlm: it loads, matches its card, covers printable ASCII, and
fine-tunes and samples through the CLI. Nothing here pretrains."""

import jax.numpy as jnp
import numpy as np

from conftest import run_cli

PRINTABLE = "\n" + "".join(map(chr, range(32, 127)))


def test_base_loads_matches_its_card_and_covers_printable_ascii():
    from charlm.base import verify_base
    from charlm.checkpoint import BASE_DIR, restore

    card = verify_base()  # every file's sha256 against the card
    state, cfg, vocab, meta = restore("base")
    assert set(PRINTABLE) <= set(vocab.chars) and vocab.size == len(PRINTABLE)
    assert (cfg.model.cell, cfg.model.input_encoding, cfg.model.vocab_size) == ("gru", "embed", vocab.size)
    assert card["vocab"] == vocab.chars and card["val_loss_nats_per_char"] == meta["loss"]
    for source in card["sources"]:
        assert {"debian_package", "version", "licence", "chars"} <= set(source)
    assert "alice" not in " ".join(s["name"] for s in card["sources"]).lower()
    assert card["command"].startswith("charlm-pretrain") and card["machine"] and card["curve"]
    size = sum(p.stat().st_size for p in BASE_DIR.rglob("*") if p.is_file())
    assert size <= 10 * 2**20, f"the shipped base is {size / 2**20:.1f} MB"
    assert (BASE_DIR / "MODEL_CARD.md").read_text().count("sha256") >= 1


def test_capitals_start_from_their_small_letters():
    from charlm.base import CAPITAL_LOGIT_OFFSET, with_capitals
    from charlm.data import Vocab

    vocab = Vocab("ABab")
    params = {"embed": {"embedding": jnp.arange(8.0).reshape(4, 2)},
              "output": {"kernel": jnp.arange(12.0).reshape(3, 4), "bias": jnp.arange(4.0)}}
    out = with_capitals(params, vocab)
    np.testing.assert_array_equal(out["embed"]["embedding"], [[4, 5], [6, 7], [4, 5], [6, 7]])
    np.testing.assert_array_equal(out["output"]["kernel"][:, :2], params["output"]["kernel"][:, 2:])
    np.testing.assert_allclose(out["output"]["bias"], [2 + CAPITAL_LOGIT_OFFSET, 3 + CAPITAL_LOGIT_OFFSET, 2, 3], rtol=1e-5)


def test_init_from_base_picks_the_finetune_preset():
    from charlm.cli import run_config_from_args, train_parser
    from charlm.config import make_run_config

    cfg = run_config_from_args(train_parser().parse_args(["--init-from", "base", "--lr", "3e-4"]))
    assert cfg == make_run_config("finetune", learning_rate=3e-4)
    assert run_config_from_args(train_parser().parse_args([])) == make_run_config("seed-small")


def test_init_from_base_fine_tunes_a_tiny_text_through_the_cli_and_samples(tmp_path, wonderland_path):
    text = tmp_path / "tiny.txt"
    text.write_text(wonderland_path.read_text(encoding="utf-8")[3000:7000] + "\nCafé au lait.\n", encoding="utf-8")
    ckpt = tmp_path / "ck"
    result = run_cli("train.py", "--text", str(text), "--init-from", "base", "--epochs", "1", "--batch-size", "2",
                     "--seq-length", "20", "--ckpt-dir", str(ckpt))
    assert result.returncode == 0, result.stderr
    assert "Initialised from base (96 chars; 1 new)" in result.stdout, "é adds a row; English adds none"
    sampled = run_cli("sample.py", "--ckpt", str(ckpt), "--prime", "alice was ", "--length", "40", "--seed", "0")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.strip()


def test_pretraining_text_is_folded_to_the_base_vocabulary_and_mixed_in_blocks(tmp_path):
    from charlm.pretrain import BASE_CHARS, blocks, build_corpus, to_ascii

    assert BASE_CHARS == PRINTABLE
    assert to_ascii("“Café” – naïve\tso…\r\n日本") == '"Cafe" - naive    so...\n'
    long = "\n".join(f"verse {i} of a book with no blank lines" for i in range(200))
    pieces = blocks(long, size=500)
    assert len(pieces) > 10 and max(map(len, pieces)) < 600 and "\n".join(pieces) == long
    sizes = build_corpus({"one": long, "two": "Para one.\n\nPara two.\n"}, tmp_path / "c" / "corpus.txt", seed=1)
    text = (tmp_path / "c" / "corpus.txt").read_text(encoding="utf-8")
    assert sizes == {"one": len(long), "two": len("Para one.\n\nPara two.\n")}
    assert "Para one." in text and "verse 199 of" in text and set(text) <= set(BASE_CHARS)
    assert not text.startswith("verse 0 of"), "blocks are shuffled together"


def test_a_tampered_base_fails_its_checksums_and_a_local_base_directory_wins(tmp_path, monkeypatch):
    import shutil

    import pytest

    from charlm.base import verify_base
    from charlm.checkpoint import BASE_DIR, resolve
    from charlm.errors import CharlmError

    copy = tmp_path / "copy"
    shutil.copytree(BASE_DIR, copy)
    biggest = max((p for p in copy.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 1
    biggest.write_bytes(bytes(data))
    with pytest.raises(CharlmError, match="does not match its card's checksums"):
        verify_base(copy)
    monkeypatch.chdir(tmp_path)
    assert resolve("base") == BASE_DIR
    (tmp_path / "base").mkdir()
    assert resolve("base") == type(BASE_DIR)("base")
