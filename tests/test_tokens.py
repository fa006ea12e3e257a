"""The token cache: the same ids as the in-memory path, rebuilt when anything it depends on
changes, never read when damaged; and the window order big corpora use."""

import dataclasses

import jax
import numpy as np
import pytest

import charlm.tokens as tokens
from charlm.config import make_run_config
from charlm.corpus import clean_text, read_texts
from charlm.data import WindowOrder, shuffled
from charlm.dataset import epoch_batches, load_corpus, prepare_corpus, training_windows
from charlm.scoring import tail_nll
from charlm.tokens import Cleaning, encode_corpus
from charlm.training import create_train_state


def in_memory(paths, cleaning: Cleaning):
    raw, files = read_texts(paths, cleaning.encoding, cleaning.errors, strip=cleaning.strip)
    return clean_text(raw, lowercase=cleaning.lowercase, strip=cleaning.strip,
                      strip_punctuation=cleaning.strip_punctuation), files


def check_same(paths, cleaning, root):
    text, files = in_memory(paths, cleaning)
    encoded = encode_corpus(paths, cleaning, root=root, log=lambda line: None)
    assert encoded.vocab.chars == "".join(sorted(set(text)))
    assert np.array_equal(encoded.tokens, encoded.vocab.encode(text)) and encoded.files == files
    return encoded


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(tokens, "CHUNK_BYTES", 997)  # many chunk and line boundaries, a prime apart


def unicode_book(tmp_path, name="book.txt", body="", crlf=True):
    cjk = "".join(chr(0x4E00 + i) for i in range(300))  # more than 256 chars: uint16 ids
    lines = ["Preamble line", "*** START OF THE PROJECT GUTENBERG EBOOK TEST ***", "ΟΔΥΣΣΕΥΣ Σ. Ça va? Ünïcödé 🙂",
             cjk, body, "ΤΕΛΟΣ.", "*** END OF THE PROJECT GUTENBERG EBOOK TEST ***", "licence"] * 3
    path = tmp_path / name
    path.write_bytes(("\r\n" if crlf else "\n").join(lines * 20).encode("utf-8"))
    return path


def test_cache_gives_the_in_memory_ids_on_alice_and_on_unicode_text(tmp_path, wonderland_path, small_chunks):
    alice = check_same([wonderland_path], Cleaning(), tmp_path / "c")
    assert alice.tokens.dtype == np.uint8 and alice.path.stat().st_size == tokens.HEADER_BYTES + len(alice.tokens)
    book, other = unicode_book(tmp_path), unicode_book(tmp_path, "other.txt", "second file", crlf=False)
    uni = check_same([book], Cleaning(), tmp_path / "c")
    assert uni.tokens.dtype == np.uint16 and "σ" in uni.vocab.chars and "ς" in uni.vocab.chars
    check_same([book, other], Cleaning(lowercase=False, strip_punctuation=True), tmp_path / "c")
    check_same([book, other], Cleaning(strip=False), tmp_path / "c")


@pytest.mark.parametrize("in_memory_max", [tokens.IN_MEMORY_MAX_BYTES, 0])  # ids in RAM, or read as needed
def test_training_and_validation_see_the_same_ids_from_the_cache(tmp_path, wonderland_path, monkeypatch,
                                                                 in_memory_max):
    monkeypatch.setattr(tokens, "IN_MEMORY_MAX_BYTES", in_memory_max)
    cfg = make_run_config(val_frac=0.1, test_frac=0.05, hidden=8)
    mapped = load_corpus([wonderland_path], cfg, log=lambda line: None)
    memory = prepare_corpus(wonderland_path.read_text(encoding="utf-8"), cfg)
    assert isinstance(mapped.tokens, tokens.TokenFile) == (in_memory_max == 0)
    assert (mapped.fingerprint, mapped.split, mapped.test_chars) == (memory.fingerprint, memory.split,
                                                                      memory.test_chars)
    windows = training_windows(mapped, cfg)
    for a, b, _ in zip(epoch_batches(mapped, cfg, windows, 3), epoch_batches(memory, cfg, windows, 3), range(3)):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    model = dataclasses.replace(cfg.model, vocab_size=memory.vocab.size)
    params = create_train_state(dataclasses.replace(cfg, model=model), jax.random.key(0), 1).params
    for metric in ("stream", "last-window"):
        assert np.array_equal(tail_nll(params, model, mapped.tokens, mapped.split, 100, metric),
                              tail_nll(params, model, memory.tokens, memory.split, 100, metric))


def test_token_file_reads_what_it_is_asked_for(tmp_path, wonderland_path, monkeypatch):
    monkeypatch.setattr(tokens, "IN_MEMORY_MAX_BYTES", 0)
    ids = encode_corpus([wonderland_path], Cleaning(), root=tmp_path, log=lambda line: None).tokens
    whole = np.asarray(ids)
    assert len(ids) == len(whole) == 144_433 and ids[5] == whole[5] and ids[-1] == whole[-1]
    view = ids[1000:2000]
    assert len(view) == 1000 and np.array_equal(np.asarray(view), whole[1000:2000])
    assert np.array_equal(view[np.array([[0, 1, 2], [997, 998, 999]])], whole[[[1000, 1001, 1002], [1997, 1998, 1999]]])
    with pytest.raises(IndexError):
        view[np.array([1000])]


def test_cache_is_rebuilt_when_the_text_or_an_option_changes(tmp_path):
    book, root, lines = unicode_book(tmp_path), tmp_path / "c", []
    first = encode_corpus([book], Cleaning(), root=root, log=lines.append)
    again = encode_corpus([book], Cleaning(), root=root, log=lines.append)
    assert again.path == first.path and len([line for line in lines if line.startswith("Encoded")]) == 1
    assert encode_corpus([book], Cleaning(lowercase=False), root=root, log=lines.append).path != first.path
    book.write_bytes(book.read_bytes().replace("Ça va".encode(), b"Ca va", 1))  # inside the kept part
    changed = check_same([book], Cleaning(), root)
    assert changed.path != first.path and "ç" not in changed.vocab.chars and "ç" in first.vocab.chars


def test_a_damaged_or_foreign_cache_file_is_rebuilt_never_read(tmp_path):
    book, other, root = unicode_book(tmp_path), unicode_book(tmp_path, "other.txt", "x", crlf=False), tmp_path / "c"
    good = encode_corpus([book], Cleaning(), root=root, log=lambda line: None)
    foreign = encode_corpus([other], Cleaning(), root=root, log=lambda line: None)
    expected = np.array(good.tokens)
    for damage, reason in [(lambda p: p.write_bytes(p.read_bytes()[:-3]), "truncated"),
                           (lambda p: p.write_bytes(foreign.path.read_bytes()), "not a charlm token file"),
                           (lambda p: p.write_bytes(b"junk"), "unreadable")]:
        damage(good.path)
        lines = []
        rebuilt = encode_corpus([book], Cleaning(), root=root, log=lines.append)
        assert reason in lines[0] and "rebuilding" in lines[0] and np.array_equal(rebuilt.tokens, expected)


def test_big_epoch_order_is_a_seeded_bijection_that_resumes_exactly():
    n, B = 10_007, 64
    order = WindowOrder(n, seed=3, epoch=2, in_memory_max=0)
    whole = np.concatenate([order.take(lo, lo + B) for lo in range(0, n, B)])
    assert np.array_equal(np.sort(whole), np.arange(n))  # every window once per epoch
    resumed = WindowOrder(n, seed=3, epoch=2, in_memory_max=0)  # a new process, from batch 50 on
    assert np.array_equal(np.concatenate([resumed.take(lo, lo + B) for lo in range(50 * B, n, B)]), whole[50 * B:])
    for other in (WindowOrder(n, 4, 2, 0), WindowOrder(n, 3, 3, 0)):
        assert np.mean(other.take(0, n) == whole) < 0.01
    small = WindowOrder(n, seed=3, epoch=2)  # below the threshold: NumPy's order, as before
    assert np.array_equal(small.take(0, n), shuffled(np.arange(n), 3, 2))


def test_an_entry_built_from_a_moved_file_names_the_file_this_run_was_given(tmp_path):
    # Issue 21: the entry is keyed by bytes, so a later run on an identical file at another path
    # shares it; the run's record (and so its checkpoint, evaluate and --novelty) must name its own file.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tmp_path / "a" / "book.txt"
    first.write_text("the same bytes in two places\n" * 20, encoding="utf-8")
    built = encode_corpus([first], Cleaning(), root=tmp_path / "c", log=lambda line: None)
    second = tmp_path / "b" / "book.txt"
    first.rename(second)
    reused = encode_corpus([second], Cleaning(), root=tmp_path / "c", log=lambda line: None)
    assert reused.path == built.path, "the entry is shared"
    assert [f["path"] for f in reused.files] == [str(second.resolve())]
    assert reused.files[0]["chars"] == built.files[0]["chars"]
    meta = {"corpus": {"files": reused.files}}
    from charlm.checkpoint import training_files

    assert training_files(meta) == [str(second.resolve())]
