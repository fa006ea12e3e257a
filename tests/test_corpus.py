from pathlib import Path

import pytest

from charlm import corpus
from charlm.errors import CharlmError

HEADER = "Gutenberg header\r\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n"
FOOTER = "\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicense\n"

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


def test_read_text_encoding_and_errors(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(CharlmError, match=r"offset 3\); pass --encoding ENC .* or --errors replace"):
        corpus.read_text(path)
    assert corpus.read_text(path, encoding="latin-1") == "café au lait"
    assert corpus.read_text(path, errors="replace") == "caf\ufffd au lait"
    assert corpus.read_text(path, errors="ignore") == "caf au lait"
    with pytest.raises(CharlmError, match=r"not valid cp1252"):  # the encoding's own name when it is not UTF-8
        corpus.decode_text(b"caf\x81", "f", encoding="cp1252")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_decode_text_drops_a_leading_byte_order_mark_only(encoding):
    data = ("\ufeff" if encoding == "utf-8" else "").encode() + "Alice\ufeffsat".encode(encoding)
    assert corpus.decode_text(data, "f", encoding=encoding) == "Alice\ufeffsat"


def test_decode_text_keeps_a_genuine_replacement_char():
    assert corpus.decode_text("a \ufffd b".encode(), "f") == "a \ufffd b"


def test_decode_text_bad_encoding_or_errors():
    for encoding in ("klingon", "base64"):  # unknown, and a bytes-to-bytes codec
        with pytest.raises(CharlmError, match=f"unknown text encoding '{encoding}'"):
            corpus.decode_text(b"abc", "f", encoding=encoding)
    with pytest.raises(CharlmError, match="errors must be one of strict, replace, ignore"):
        corpus.decode_text(b"abc", "f", errors="surrogateescape")


@pytest.mark.parametrize("data, reason", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a NUL byte at offset 8"),
    (b"abc caf\xe9" + bytes(20) + b"\xff", "a NUL byte at offset 8"),  # binary, not badly encoded
    (bytes(range(1, 32)) * 10, "260 of its first 310 chars are control chars"),  # \t\n\v\f\r are not counted
    ("UTF-16 text".encode("utf-16"), "a NUL byte at offset 3"),
])
def test_binary_files_are_refused(data, reason):
    for errors in corpus.ERRORS:
        with pytest.raises(CharlmError, match=rf"f looks like a binary file, not text \({reason}.*--encoding"):
            corpus.decode_text(data, "f", errors=errors)


def test_binary_reason_accepts_text_with_whitespace_controls():
    def reason(text):
        return corpus.binary_reason(text.encode(), text)
    assert reason("tabs\tand\r\nnewlines\f\v, 東京 😀") is None
    assert reason("ok\x1b[1m" + "x" * 100) is None  # an escape or two is still text
    assert reason("東" * 10_000 + "\x00") == "a NUL byte at offset 30000"  # after 8 KiB too
    assert corpus.decode_text("UTF-16 text".encode("utf-16"), "f", encoding="utf-16") == "UTF-16 text"


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
    assert corpus.resolve_corpus("book.txt") == [Path("book.txt")]
    (tmp_path / "wonderland.txt").write_text("x")
    assert corpus.resolve_corpus() == [Path("wonderland.txt")]


def test_resolve_corpus_downloads_a_gutenberg_book_even_beside_a_local_file(book_server, tmp_path, monkeypatch):
    url, _ = book_server
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wonderland.txt").write_text("x")
    monkeypatch.setenv(corpus.GUTENBERG_URL_ENV, url)
    monkeypatch.setenv(corpus.CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert corpus.resolve_corpus(gutenberg_id=11) == [tmp_path / "cache" / "pg11.txt"]


def test_resolve_corpus_unpacks_the_packaged_alice_without_local_file(tmp_path, monkeypatch, wonderland_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(corpus.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(corpus.GUTENBERG_URL_ENV, "http://127.0.0.1:9")  # never asked
    [path] = corpus.resolve_corpus()
    assert path == tmp_path / "cache" / "wonderland.txt"
    tutorial = wonderland_path.read_text(encoding="utf-8")
    assert path.read_text(encoding="utf-8") == tutorial.split("\n", 1)[1], "the tutorial's file less its START line"
    assert corpus.clean_text(path.read_text(encoding="utf-8")) == corpus.clean_text(tutorial)
    path.write_text("damaged")
    assert corpus.resolve_corpus() == [path] and path.read_text(encoding="utf-8") != "damaged", "rewritten"


def test_fingerprint_is_stable_and_sensitive():
    assert corpus.fingerprint("abc") == corpus.fingerprint("abc")
    assert corpus.fingerprint("abc") != corpus.fingerprint("abd")


def test_many_inputs_in_a_stable_order_with_a_separator(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / ".git").mkdir()
    for name, text in {"src/b.py": "b = 2\n", "src/a.py": "a = 1", "src/pkg/c.py": "c = 3\r\n", "src/notes.md": "x",
                       "src/pkg/__init__.py": "", "src/.git/config.py": "hidden", "book.txt": HEADER + "the book" + FOOTER}.items():
        (tmp_path / name).write_text(text, encoding="utf-8", newline="")
    files = corpus.find_text_files([tmp_path / "book.txt", tmp_path / "src"], glob="*.py")
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["book.txt", "src/a.py", "src/b.py", "src/pkg/c.py"]
    text, records = corpus.read_texts(files)
    assert text == "the book\n\n\na = 1\n\nb = 2\n\n\nc = 3\n"
    assert [r["chars"] for r in records] == [9, 5, 6, 6] and records[1]["fingerprint"] == corpus.fingerprint("a = 1")
    assert corpus.read_texts(files, strip=False)[0].startswith(HEADER.replace("\r\n", "\n"))
    with pytest.raises(CharlmError, match=r"no text file under .*src matches --glob '\*.rs'"):
        corpus.find_text_files([tmp_path / "src"], glob="*.rs")
    (tmp_path / "src" / "bad.py").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CharlmError, match=r"bad\.py"):
        corpus.read_texts(corpus.find_text_files([tmp_path / "src"], glob="*.py"))


def test_train_and_evaluate_on_a_directory_record_and_reread_its_files(tmp_path, capsys, wonderland_path):
    """train.py --text DIR --glob: the checkpoint lists the files, and evaluate reads them again."""
    import json

    from charlm.checkpoint import read_meta
    from charlm.cli import train_main
    from charlm.evaluate import main as evaluate_main
    from conftest import TINY

    book = wonderland_path.read_text(encoding="utf-8")
    (tmp_path / "books" / "two").mkdir(parents=True)
    (tmp_path / "books" / "one.txt").write_text(book[:1500], encoding="utf-8")
    (tmp_path / "books" / "two" / "three.txt").write_text(book[3000:4500], encoding="utf-8")
    (tmp_path / "books" / "skip.md").write_text("not this", encoding="utf-8")
    ck = tmp_path / "ck"
    assert train_main(["--text", str(tmp_path / "books"), "--glob", "*.txt", "--ckpt-dir", str(ck), *TINY]) == 0
    files = read_meta(ck)["corpus"]["files"]
    assert [Path(f["path"]).name for f in files] == ["one.txt", "three.txt"]
    assert sum(f["chars"] for f in files) + len(corpus.FILE_SEPARATOR) == read_meta(ck)["corpus"]["chars"]
    capsys.readouterr()
    assert evaluate_main(["--ckpt", str(ck), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["text"].endswith("one.txt and 1 more file(s)") and report["chars"] > 2900
    assert train_main(["--text", str(tmp_path / "books"), "--glob", "*.rs", "--ckpt-dir", str(tmp_path / "x")]) == 2
    assert "no text file under" in capsys.readouterr().err
