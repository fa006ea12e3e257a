import pytest

from charlm import corpus
from charlm.errors import CharlmError

BODY = "Chapter 1\nAlice sat.\n"


def gutenberg(style: str, body: str = BODY, newline: str = "\n") -> str:
    text = (f"The Project Gutenberg eBook of Alice\nLicense blah\n*** START OF {style} PROJECT GUTENBERG EBOOK ALICE ***\n"
            f"{body}*** END OF {style} PROJECT GUTENBERG EBOOK ALICE ***\nMore license\n")
    return text.replace("\n", newline)


@pytest.mark.parametrize("style", ["THIS", "THE"])
def test_strip_gutenberg_both_marker_styles(style):
    assert corpus.strip_gutenberg(gutenberg(style)) == BODY


def test_strip_without_markers_is_identity():
    assert corpus.strip_gutenberg(BODY) == BODY


def test_strip_only_start_marker():
    assert corpus.strip_gutenberg("header\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nbody\n") == "body\n"


def test_clean_text_normalises_crlf_then_strips_and_lowercases():
    assert corpus.clean_text(gutenberg("THE", newline="\r\n")) == BODY.lower()
    assert corpus.clean_text(gutenberg("THE"), lowercase=False) == BODY
    assert corpus.clean_text(gutenberg("THE"), strip=False).startswith("the project gutenberg")


def test_read_text_errors(tmp_path):
    with pytest.raises(CharlmError, match="not found"):
        corpus.read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(CharlmError, match="empty"):
        corpus.read_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"abc caf\xe9")
    with pytest.raises(CharlmError, match=r"not valid UTF-8 \(byte 0xe9 at offset 7\)"):
        corpus.read_text(tmp_path / "latin1.txt")
    with pytest.raises(CharlmError, match="directory"):
        corpus.read_text(tmp_path)


def test_read_text_utf8(tmp_path):
    (tmp_path / "u.txt").write_text("naïve café", encoding="utf-8")
    assert corpus.read_text(tmp_path / "u.txt") == "naïve café"


@pytest.fixture
def book_server(gutenberg_server):
    url, put_book, requests = gutenberg_server
    put_book(11, gutenberg("THE"))
    return url, requests


def test_download_gutenberg_caches(book_server, tmp_path, monkeypatch):
    url, requests = book_server
    monkeypatch.setenv(corpus.GUTENBERG_URL_ENV, url)
    monkeypatch.setenv(corpus.CACHE_DIR_ENV, str(tmp_path / "cache"))
    path = corpus.download_gutenberg(11)
    assert path == tmp_path / "cache" / "pg11.txt"
    assert corpus.clean_text(corpus.read_text(path)) == BODY.lower()
    assert corpus.download_gutenberg(11) == path
    assert len(requests) == 1, "the second call must use the cache"
    assert not list((tmp_path / "cache").glob("*.part*"))


def test_download_failure_says_to_pass_text(book_server, tmp_path, monkeypatch):
    url, _ = book_server
    monkeypatch.setenv(corpus.GUTENBERG_URL_ENV, url)
    monkeypatch.setenv(corpus.CACHE_DIR_ENV, str(tmp_path / "cache"))
    with pytest.raises(CharlmError, match=r"could not download Project Gutenberg book 99999.*--text FILE"):
        corpus.download_gutenberg(99999)
    assert not (tmp_path / "cache" / "pg99999.txt").exists()


def test_resolve_corpus_prefers_text_then_local_wonderland(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(corpus.resolve_corpus("book.txt")) == "book.txt"
    (tmp_path / "wonderland.txt").write_text("x")
    assert str(corpus.resolve_corpus()) == "wonderland.txt"


def test_resolve_corpus_downloads_book_11_without_local_file(book_server, tmp_path, monkeypatch):
    url, _ = book_server
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(corpus.GUTENBERG_URL_ENV, url)
    monkeypatch.setenv(corpus.CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert corpus.resolve_corpus() == tmp_path / "cache" / "pg11.txt"


def test_fingerprint_is_stable_and_sensitive():
    assert corpus.fingerprint("abc") == corpus.fingerprint("abc")
    assert corpus.fingerprint("abc") != corpus.fingerprint("abd")
