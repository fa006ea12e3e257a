"""Getting the book: read a text file (UTF-8 by default) or download a Project Gutenberg book once, then clean it.

Pure functions except for the file and network I/O, which stays in `read_text` and
`download_gutenberg`. Every failure a user can cause is a one-line `CharlmError`.
"""

from __future__ import annotations

import codecs
import fnmatch
import gzip
import hashlib
import http.client
import itertools
import os
import re
import unicodedata
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

from charlm.errors import CharlmError

TUTORIAL_FILENAME = "wonderland.txt"
# Tests point this at a local HTTP server; the path below it mirrors gutenberg.org's cache.
GUTENBERG_URL_ENV = "CHARLM_GUTENBERG_URL"
DEFAULT_GUTENBERG_URL = "https://www.gutenberg.org"
CACHE_DIR_ENV = "CHARLM_CACHE_DIR"

# Both marker styles: "*** START OF THIS PROJECT GUTENBERG EBOOK X ***" (older) and
# "*** START OF THE PROJECT GUTENBERG EBOOK X ***" (newer), with their END twins.
_START = re.compile(r"^\*{3}\s*START OF (?:THIS|THE) PROJECT GUTENBERG EBOOK.*$", re.MULTILINE | re.IGNORECASE)
_END = re.compile(r"^\*{3}\s*END OF (?:THIS|THE) PROJECT GUTENBERG EBOOK.*$", re.MULTILINE | re.IGNORECASE)


# Between the files of a corpus of several: a blank line, so no file's last line runs into the next.
FILE_SEPARATOR = "\n\n"
ERRORS = ("strict", "replace", "ignore")  # what to do with bytes the encoding cannot decode
_SNIFF_CHARS = 8192      # chars at the start of a text whose control chars are counted
_MAX_CONTROL_SHARE = 0.1  # more control chars than this (tabs and newlines aside) means binary


def binary_reason(data: bytes, text: str) -> str | None:
    """Why `data`, decoded as `text`, looks like a binary file rather than text, or None if it does not.

    Any NUL char (git's test for binary files), or too many control chars in the first 8,192.
    """
    if "\x00" in text:  # checked on the text: UTF-16 and UTF-32 text has NUL bytes but no NUL chars
        return f"a NUL byte at offset {data.find(0)}"
    head = text[:_SNIFF_CHARS]
    controls = sum(1 for c in head if unicodedata.category(c) == "Cc" and c not in "\t\n\r\f\v")
    if controls > _MAX_CONTROL_SHARE * len(head):
        return f"{controls} of its first {len(head)} chars are control chars"
    return None


READ_CHUNK_BYTES = 1 << 24  # files are decoded 16 MB at a time, so no pass holds a whole corpus


def _check_encoding(encoding: str, errors: str) -> None:
    if errors not in ERRORS:
        raise CharlmError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
    try:
        text_codec = getattr(codecs.lookup(encoding), "_is_text_encoding", True)  # False for base64 and the like
    except LookupError:
        text_codec = False
    if not text_codec:
        raise CharlmError(f"unknown text encoding {encoding!r} (try utf-8, latin-1, cp1252, utf-16)")


def _binary_error(name: str, reason: str) -> CharlmError:
    return CharlmError(f"{name} looks like a binary file, not text ({reason}); pass a plain text file, "
                       f"or --encoding if it is text in an encoding such as utf-16")


def decode_chunks(chunks: Iterator[bytes], name: str, encoding: str = "utf-8",
                  errors: str = "strict") -> Iterator[str]:
    """Decodes the bytes of text file `name`, given in pieces, refusing binary data and naming the
    first bad byte by its offset in the file. The first piece is sniffed for binary data (see
    binary_reason); a NUL char anywhere is binary."""
    _check_encoding(encoding, errors)
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    offset, first = 0, True
    for data in itertools.chain(chunks, [b""]):
        final = not data
        if first and data:  # leniently, so a binary file is called binary rather than badly encoded
            reason = binary_reason(data, data.decode(encoding, "replace"))
            if reason:
                raise _binary_error(name, reason)
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(data, final)
        except UnicodeDecodeError as e:
            where, bad = offset - pending + e.start, (decoder.getstate()[0] + data)[e.start:e.start + 1] or data[:1]
            shown = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding
            raise CharlmError(f"{name} is not valid {shown} (byte 0x{bad[0]:02x} at offset {where}); "
                              f"pass --encoding ENC if it is in another encoding (e.g. latin-1, cp1252), "
                              f"or --errors replace to replace the undecodable bytes") from None
        if "\x00" in text:  # checked on the text: UTF-16 and UTF-32 text has NUL bytes but no NUL chars
            raise _binary_error(name, f"a NUL byte at offset {offset + max(data.find(0), 0)}")
        if first and text:
            # A leading byte-order mark (Windows editors and some Gutenberg files write one) is a
            # marker, not text: kept, it would become a vocabulary char that training sees once.
            text, first = text.removeprefix("\ufeff"), False
        offset += len(data)
        if text:
            yield text


def decode_text(data: bytes, name: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Decodes the bytes of text file `name`, refusing binary data and naming the first bad byte."""
    return "".join(decode_chunks(iter([data]), name, encoding, errors))


def _opened(path: Path):
    if not path.exists():
        raise CharlmError(f"text file not found: {path}")
    if path.is_dir():
        raise CharlmError(f"text path is a directory, not a file: {path}")
    try:
        f = open(path, "rb")
        empty = os.fstat(f.fileno()).st_size == 0
    except OSError as e:
        raise CharlmError(f"cannot read text file {path}: {e.strerror}") from None
    if empty:
        f.close()
        raise CharlmError(f"text file is empty: {path}")
    return f


def read_bytes(path: Path, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
    """A file's bytes in pieces, with read_text's messages for a missing, unreadable or empty file."""
    with _opened(Path(path)) as f:
        while True:
            try:
                data = f.read(chunk_bytes)
            except OSError as e:
                raise CharlmError(f"cannot read text file {path}: {e.strerror}") from None
            if not data:
                return
            yield data


def iter_text(path: str | os.PathLike, encoding: str = "utf-8", errors: str = "strict",
              chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[str]:
    """read_text's text in pieces of about `chunk_bytes`, checked as read_text checks it."""
    path = Path(path)
    return decode_chunks(read_bytes(path, chunk_bytes), f"text file {path}", encoding, errors)


def read_text(path: str | os.PathLike, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Reads a text file (UTF-8 unless told otherwise), failing with a message that says what is wrong with it.

    `errors` is Python's: strict (refuse undecodable bytes), replace (with U+FFFD) or ignore (drop them).
    """
    return "".join(iter_text(path, encoding, errors))


def find_text_files(inputs: list[str | os.PathLike], glob: str | None = None) -> list[Path]:
    """The files of a corpus, in a stable order: each named file as given, and for each directory
    the files under it (recursively, sorted by path), skipping hidden names and empty files and,
    with `glob` (e.g. '*.py'), names that do not match. A file named twice is read once."""
    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if not path.is_dir():
            files.append(path)  # read_text says what is wrong with it, if anything
            continue
        found = sorted(p for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
                       and (glob is None or fnmatch.fnmatch(p.name, glob)) and p.stat().st_size > 0)
        if not found:
            raise CharlmError(f"no text file under {path}" + (f" matches --glob {glob!r}" if glob else ""))
        files += found
    return list(dict.fromkeys(files))


def describe_files(paths: list) -> str:
    """A short name for a corpus's files: the first, and how many more."""
    return str(paths[0]) + (f" and {len(paths) - 1} more file(s)" if len(paths) > 1 else "")


def read_texts(paths: list[Path], encoding: str = "utf-8", errors: str = "strict",
               strip: bool = True) -> tuple[str, list[dict]]:
    """Reads a corpus of one or more files: (text, [{path, chars, fingerprint} per file]).

    One file is returned as read. Several are each given LF newlines and, with `strip`, lose
    their own Gutenberg header and footer, then are joined with FILE_SEPARATOR."""
    texts = [read_text(p, encoding, errors) for p in paths]
    if len(texts) > 1:
        texts = [strip_gutenberg(normalize_newlines(t)) if strip else normalize_newlines(t) for t in texts]
    files = [{"path": str(p.resolve()), "chars": len(t), "fingerprint": fingerprint(t)} for p, t in zip(paths, texts)]
    return FILE_SEPARATOR.join(texts), files


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def gutenberg_span(pieces: Iterable[str]) -> tuple[int, int | None]:
    """(start, end) in chars of the part of a text that `strip_gutenberg` keeps (end None: to the
    end), given as pieces cut after line ends (one piece: a whole text). The scan stops at the END
    line after the START line, so a streamed book is read only that far."""
    offset, start, first_end = 0, None, None
    for piece in pieces:
        at = 0
        if start is None and (m := _START.search(piece)):
            newline = piece.find("\n", m.end())
            at = newline + 1 if newline >= 0 else len(piece)
            start = offset + at
        if (m := _END.search(piece, at)) and start is not None:
            return start, offset + m.start()
        if m and first_end is None and start is None:  # the END line, should no START line follow
            first_end = offset + m.start()
        offset += len(piece)
    return (start, None) if start is not None else (0, first_end)


def strip_gutenberg(text: str) -> str:
    """Drops a Project Gutenberg header (through the START line) and footer (from the END line).

    A text without the markers is returned unchanged.
    """
    start, end = gutenberg_span([text])
    return text[start:end]


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
    """Returns the cached path of Gutenberg book `book_id`, downloading it the first time."""
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
    return write_cached(target, data, "the download cache")


def write_cached(target: Path, data: bytes, what: str) -> Path:
    """Writes `data` to `target` under a temporary name and renames it, so an interrupted write
    never leaves a truncated file in the cache."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + f".part{os.getpid()}")
        partial.write_bytes(data)
        os.replace(partial, target)
    except OSError as e:
        raise CharlmError(f"cannot write {what} {target.parent}: {e.strerror}; "
                          f"set {CACHE_DIR_ENV} to a writable directory") from None
    return target


def resolve_corpus(text_path: str | list[str] | None = None, gutenberg_id: int | None = None,
                   glob: str | None = None) -> list[Path]:
    """The training text's files: --text (files and directories, see find_text_files), else
    --gutenberg (downloaded once into the cache), else ./wonderland.txt, else the packaged Alice."""
    if text_path is not None:
        return find_text_files([text_path] if isinstance(text_path, (str, os.PathLike)) else text_path, glob)
    if gutenberg_id is not None:
        return [download_gutenberg(gutenberg_id)]
    if Path(TUTORIAL_FILENAME).is_file():
        return [Path(TUTORIAL_FILENAME)]
    return [packaged_book()]


PACKAGED_BOOK = Path(__file__).parent / "books" / "wonderland.txt.gz"


def packaged_book() -> Path:
    """The default corpus that ships with charlm: the tutorial's Alice, its Gutenberg START line
    removed, unpacked once into the cache (so a first run needs no network) and returned as a path."""
    data = gzip.decompress(PACKAGED_BOOK.read_bytes())
    target = cache_dir() / TUTORIAL_FILENAME
    if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
        return target
    return write_cached(target, data, "the default book to the cache")
