import pytest

from charlm.config import make_run_config
from charlm.corpus import fingerprint
from charlm.errors import CharlmError
from charlm.novelty import novelty_line, training_text, verbatim_shares


def test_verbatim_shares_count_every_substring_with_repeats():
    train = "the cat sat on the mat"
    shares = verbatim_shares(["the cat", "dog cat"], train, sizes=(3, 7, 40))
    # "the cat": the, he , e c, " ca", cat all seen (5/5); "dog cat": dog, og , "g c" unseen, " ca", cat seen
    assert shares == {3: 7 / 10, 7: 1 / 2, 40: None}
    assert novelty_line(shares) == ("Verbatim in the training text (share of the sample's substrings): "
                                    "3-char 70.0%, 7-char 50.0%, 40-char n/a")


def test_training_text_is_the_checked_training_part(tmp_path):
    cfg = make_run_config()
    book = tmp_path / "book.txt"
    book.write_text("Alice Was Beginning To Get Very Tired", encoding="utf-8")
    cleaned = "alice was beginning to get very tired"
    meta = {"corpus": {"source": str(book), "fingerprint": fingerprint(cleaned), "split": 20}}
    assert training_text(meta, cfg) == cleaned[:20], "cleaned as in training and cut before validation"
    other = tmp_path / "other.txt"
    other.write_text("something else", encoding="utf-8")
    with pytest.raises(CharlmError, match="is not the text this checkpoint was trained on"):
        training_text(meta, cfg, str(other))
    with pytest.raises(CharlmError, match="pass --text FILE: the checkpoint does not record its training text"):
        training_text({"corpus": {}}, cfg)
    with pytest.raises(CharlmError, match="not found|No such file|cannot"):
        training_text({"corpus": {"source": str(tmp_path / "gone.txt")}}, cfg)


def test_real_word_share_with_and_without_a_word_list(tmp_path):
    from charlm.novelty import load_word_list, real_word_share, real_words_line, words

    assert words("Alice's cat-like 3rd x QUEEN") == ["alice", "cat", "like", "rd", "queen"]
    train = "alice and the queen"
    samples = ["Alice met the Quene,", "and a Kat sat."]  # words: alice met the quene | and kat sat
    assert real_word_share(samples, train, None) == (3 / 7, 7)
    listed = tmp_path / "words"
    listed.write_text("Met\nsat\ncat's\n", encoding="utf-8")
    word_list = load_word_list(listed)
    assert word_list == {"met", "sat", "cat"}
    assert real_word_share(samples, train, word_list) == (5 / 7, 7)
    assert load_word_list(tmp_path / "missing") is None
    assert real_words_line(5 / 7, 7, listed) == \
        f"Real words: 71.4% of 7 (alphabetic runs of 2+ letters found in the training text or {listed})"
    assert "no word list at /usr/share/dict/words" in real_words_line(None, 0, None)
