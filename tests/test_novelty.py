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
