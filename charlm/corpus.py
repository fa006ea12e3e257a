"""Getting the book: read a UTF-8 file or download a Project Gutenberg book once, then clean it.

Pure functions except for the file and network I/O, which stays in `read_text` and
`download_gutenberg`. Every failure a user can cause is a one-line `CharlmError`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import unicodedata
import urllib.error
import urllib.request
from pathlib import Path

from charlm.errors import CharlmError

DEFAULT_GUTENBERG_ID = 11  # Alice's Adventures in Wonderland
TUTORIAL_FILENAME = "wonderland.txt"
# Tests point this at a local HTTP server; the path below it mirrors gutenberg.org's cache.
GUTENBERG_URL_ENV = "CHARLM_GUTENBERG_URL"
DEFAULT_GUTENBERG_URL = "https://www.gutenberg.org"
CACHE_DIR_ENV = "CHARLM_CACHE_DIR"

# Both marker styles: "*** START OF THIS PROJECT GUTENBERG EBOOK X ***" (older) and
# "*** START OF THE PROJECT GUTENBERG EBOOK X ***" (newer), with their END twins.
_START = re.compile(r"^\*{3}\s*START OF (?:THIS|THE) PROJECT GUTENBERG EBOOK.*$", re.M | re.I)
_END = re.compile(r"^\*{3}\s*END OF (?:THIS|THE) PROJECT GUTENBERG EBOOK.*$", re.M | re.I)


def read_text(path: str | os.PathLike) -> str:
    """Reads a UTF-8 text file, failing with a message that says what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise CharlmError(f"text file not found: {path}")
    if path.is_dir():
        raise CharlmError(f"text path is a directory, not a file: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CharlmError(f"cannot read text file {path}: {e.strerror}") from None
    if not data:
        raise CharlmError(f"text file is empty: {path}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharlmError(f"text file {path} is not valid UTF-8 (byte 0x{data[e.start]:02x} "
                          f"at offset {e.start})") from None


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg(text: str) -> str:
    """Drops a Project Gutenberg header (through the START line) and footer (from the END line).

    A text without the markers is returned unchanged.
    """
    start = _START.search(text)
    if start:
        newline = text.find("\n", start.end())
        text = text[newline + 1:] if newline >= 0 else ""
    end = _END.search(text)
    if end:
        text = text[:end.start()]
    return text


def remove_punctuation(text: str) -> str:
    """Drops every Unicode punctuation char (categories P*), as tutorial extension 2 suggests."""
    return "".join(c for c in text if not unicodedata.category(c).startswith("P"))


def clean_text(text: str, *, lowercase: bool = True, strip: bool = True, strip_punctuation: bool = False) -> str:
    """The tutorial's preprocessing: LF newlines, no Gutenberg boilerplate, lowercase."""
    text = normalize_newlines(text)
    if strip:
        text = strip_gutenberg(text)
    if strip_punctuation:
        text = remove_punctuation(text)
    return text.lower() if lowercase else text


def fingerprint(text: str) -> str:
    """A short stable hash of a (cleaned) corpus, stored with checkpoints."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    import platformdirs  # only needed when downloading

    return Path(platformdirs.user_cache_dir("charlm"))


def gutenberg_url(book_id: int) -> str:
    base = os.environ.get(GUTENBERG_URL_ENV, DEFAULT_GUTENBERG_URL).rstrip("/")
    return f"{base}/cache/epub/{book_id}/pg{book_id}.txt"


def download_gutenberg(book_id: int, *, timeout: float = 30.0) -> Path:
    """Returns the cached path of Gutenberg book `book_id`, downloading it the first time.

    The file is written under a temporary name and renamed, so an interrupted download
    never leaves a truncated book in the cache.
    """
    if not isinstance(book_id, int) or book_id <= 0:
        raise CharlmError(f"Gutenberg book id must be a positive integer, got {book_id!r}")
    target = cache_dir() / f"pg{book_id}.txt"
    if target.exists() and target.stat().st_size > 0:
        return target
    url = gutenberg_url(book_id)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise CharlmError(f"could not download Project Gutenberg book {book_id} from {url} ({reason}); "
                          f"pass --text FILE to train on a local text file") from None
    if not data:
        raise CharlmError(f"download of Project Gutenberg book {book_id} from {url} was empty; "
                          f"pass --text FILE to train on a local text file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + f".part{os.getpid()}")
        partial.write_bytes(data)
        os.replace(partial, target)
    except OSError as e:
        raise CharlmError(f"cannot write the download cache {target.parent}: {e.strerror}; "
                          f"set {CACHE_DIR_ENV} to a writable directory") from None
    return target


def resolve_corpus(text_path: str | None = None, gutenberg_id: int | None = None) -> Path:
    """Where the training text comes from: --text, else --gutenberg, else ./wonderland.txt,
    else Gutenberg book 11 (downloaded once into the cache)."""
    if text_path is not None:
        return Path(text_path)
    if gutenberg_id is None and Path(TUTORIAL_FILENAME).is_file():
        return Path(TUTORIAL_FILENAME)
    return download_gutenberg(gutenberg_id if gutenberg_id is not None else DEFAULT_GUTENBERG_ID)
