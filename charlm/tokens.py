"""The token cache: a corpus read, cleaned and encoded once, in chunks, into a compact file that
training reads as it goes (see TokenFile), so RAM stays flat whatever the corpus's size.

Under `cache_dir()/tokens/`, one entry per corpus and set of options:
  <key>.tokens  a 64-byte header (magic, format, id width, token count, key), then the ids:
                uint8 when the vocabulary has at most 256 chars, else uint16
  <key>.json    the vocabulary, the cleaned text's length and fingerprint, each file's record
The key hashes every file's bytes, the decoding and cleaning options and the vocabulary being
extended, so a change to any of them makes a new entry. An entry whose header or size disagrees
with its sidecar is rebuilt, with a message; it is never read.

The text streams through three passes over the files: find each file's Gutenberg markers, count
the cleaned chars (vocabulary, length, fingerprint), write the ids. Each pass holds one chunk of
complete lines, so cleaning a chunk is cleaning the text: `clean_text` of a whole file gives the
same chars (tested on Alice and on a Unicode text).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from charlm import corpus as text_io
from charlm.data import Vocab
from charlm.errors import CharlmError

FORMAT = 1
MAGIC = b"CHARLMTK"
HEADER = struct.Struct("<8sHHQ32s")  # magic, format, bytes per id, token count, key
HEADER_BYTES = 64
_UNICODE = 0x110000
CHUNK_BYTES = text_io.READ_CHUNK_BYTES  # bytes decoded at a time (tests make it small)


@dataclass(frozen=True)
class Cleaning:
    """How files become the training text: decoding and the tutorial's cleaning (DataConfig's)."""

    encoding: str = "utf-8"
    errors: str = "strict"
    lowercase: bool = True
    strip: bool = True
    strip_punctuation: bool = False


@dataclass(frozen=True)
class EncodedCorpus:
    """A cached corpus: ids (an array, or for a big corpus a TokenFile), their vocabulary, the cleaned text's
    fingerprint (as `corpus.fingerprint` of the whole text) and each file's record."""

    tokens: np.ndarray
    vocab: Vocab
    fingerprint: str
    files: list[dict]
    path: Path


def cache_key(paths: Sequence[Path], cleaning: Cleaning, extend: Vocab | None = None) -> str:
    """Identifies an entry: the files' bytes (hashed in chunks), the options, the vocabulary extended."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, "cleaning": cleaning.__dict__,
                                   "extend": None if extend is None else extend.chars}).encode())
    for path in paths:
        h.update(b"\0file\0")
        for data in text_io.read_bytes(path):
            h.update(data)
    return h.hexdigest()[:32]


def line_pieces(chunks: Iterator[str], longest: int | None = None) -> Iterator[str]:
    """The text of `chunks` with LF newlines, re-cut after line ends. A line longer than `longest`
    is cut inside it (never between CR and LF), which only a text without newlines needs."""
    carry, longest = "", longest or 4 * CHUNK_BYTES
    for chunk in chunks:
        carry += chunk
        cut = max(carry.rfind("\n"), carry.rfind("\r", 0, len(carry) - 1)) + 1
        if cut == 0 and len(carry) > longest:
            cut = len(carry) - carry.endswith("\r")
        if cut:
            yield text_io.normalize_newlines(carry[:cut])
            carry = carry[cut:]
    if carry:
        yield text_io.normalize_newlines(carry)


def _lines(path: Path, cleaning: Cleaning) -> Iterator[str]:
    return line_pieces(text_io.iter_text(path, cleaning.encoding, cleaning.errors, CHUNK_BYTES))


def gutenberg_cut(path: Path, cleaning: Cleaning) -> tuple[int, int | None]:
    """(start, end) in chars of the file's LF text that `strip_gutenberg` keeps; end None: to the end."""
    return text_io.gutenberg_span(_lines(path, cleaning)) if cleaning.strip else (0, None)


def cleaned_pieces(paths: Sequence[Path], cleaning: Cleaning,
                   cuts: Sequence[tuple[int, int | None]]) -> Iterator[tuple[int, str, str]]:
    """The corpus as `read_texts` + `clean_text` make it, in pieces: (file index, the file's text
    before punctuation and case, the cleaned text); the separators between files come as index -1."""
    for i, (path, (start, end)) in enumerate(zip(paths, cuts)):
        if i:
            yield -1, text_io.FILE_SEPARATOR, text_io.FILE_SEPARATOR
        offset = 0
        for piece in _lines(path, cleaning):
            kept = piece[max(0, start - offset):len(piece) if end is None else max(0, end - offset)]
            offset += len(piece)
            if kept:
                yield i, kept, _clean(kept, cleaning)
            if end is not None and offset >= end:
                break


def _clean(piece: str, cleaning: Cleaning) -> str:
    if cleaning.strip_punctuation:
        piece = text_io.remove_punctuation(piece)
    return piece.lower() if cleaning.lowercase else piece


def _codes(text: str) -> np.ndarray:
    """The text's code points; one byte each for ASCII text (CPython knows, in O(1), that it is)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32)


def _count(paths, cleaning, cuts) -> tuple[np.ndarray, str, list]:
    """Pass 2: how often each code point occurs in the cleaned text, its fingerprint, and each file's
    (chars, sha256) before punctuation and case, as read_texts records them."""
    counts = np.zeros(_UNICODE, np.int64)
    whole = hashlib.sha256()
    per_file = [[0, hashlib.sha256()] for _ in paths]
    for i, kept, cleaned in cleaned_pieces(paths, cleaning, cuts):
        if i >= 0:
            per_file[i][0] += len(kept)
            per_file[i][1].update(kept.encode("utf-8"))
        whole.update(cleaned.encode("utf-8"))
        counts += np.bincount(_codes(cleaned), minlength=_UNICODE)
    return counts, whole.hexdigest()[:16], per_file


def _file_records(paths, cleaning, per_file) -> list[dict]:
    """read_texts' records: one file as read (its own newlines), several as joined."""
    if len(paths) == 1:
        chars, h = 0, hashlib.sha256()
        for piece in text_io.iter_text(paths[0], cleaning.encoding, cleaning.errors, CHUNK_BYTES):
            chars += len(piece)
            h.update(piece.encode("utf-8"))
        per_file = [[chars, h]]
    return [{"path": str(Path(p).resolve()), "chars": chars, "fingerprint": h.hexdigest()[:16]}
            for p, (chars, h) in zip(paths, per_file)]


def _write(target: Path, key: str, paths, cleaning, cuts, vocab: Vocab, n_tokens: int) -> None:
    """Pass 3: the ids, written through a temporary file renamed into place."""
    dtype = _id_dtype(vocab.size)
    table = np.full(_UNICODE, 0, dtype=dtype)
    table[_codes(vocab.chars)] = np.arange(vocab.size)
    partial = target.with_name(f"{target.name}.part{os.getpid()}")
    written = 0
    with open(partial, "wb") as f:
        f.write(HEADER.pack(MAGIC, FORMAT, dtype.itemsize, n_tokens, key.encode()).ljust(HEADER_BYTES, b"\0"))
        for _, _, cleaned in cleaned_pieces(paths, cleaning, cuts):
            ids = table[_codes(cleaned)]
            f.write(ids.tobytes())
            written += len(ids)
    if written != n_tokens:  # a file changed between the passes
        partial.unlink()
        raise CharlmError(f"the text changed while it was being encoded ({n_tokens} chars counted, {written} "
                          f"written); run again")
    os.replace(partial, target)


IN_MEMORY_MAX_BYTES = 64 << 20  # a token file up to this size is read into RAM; a bigger one is read as needed


class TokenFile:
    """A big token file's ids as a read-only, 1-D array-like that reads only what is asked for.

    Indexing with an array reads each row's span with one os.pread (a batch of windows is one
    read per window) and a slice is a view that reads nothing until np.asarray is called on
    it. Nothing is memory-mapped, because every page of a mapping that a random window touches
    stays in the process's RSS: a long run would end with the whole file resident.
    """

    ndim = 1

    def __init__(self, path: Path, dtype: np.dtype, count: int, start: int = 0, fd: int | None = None):
        self.path, self.dtype, self._count, self._start = Path(path), np.dtype(dtype), count, start
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            weakref.finalize(self, os.close, fd)
            self._owner = None
        self._fd = fd

    def _view(self, start: int, count: int) -> "TokenFile":
        view = TokenFile(self.path, self.dtype, count, self._start + start, self._fd)
        view._owner = self._owner or self  # keeps the file open while a view lives
        return view

    def __len__(self) -> int:
        return self._count

    @property
    def shape(self) -> tuple[int]:
        return (self._count,)

    @property
    def size(self) -> int:
        return self._count

    def _read(self, lo: int, hi: int) -> np.ndarray:
        width = self.dtype.itemsize
        out = np.empty(max(0, hi - lo), self.dtype)
        view, done = memoryview(out).cast("B"), 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:done + (1 << 30)]], HEADER_BYTES + (self._start + lo) * width + done)
            if got <= 0:
                raise CharlmError(f"the token file {self.path} was truncated while training read it")
            done += got
        return out

    def __getitem__(self, key):
        if isinstance(key, slice):
            lo, hi, step = key.indices(self._count)
            return self._view(lo, max(0, hi - lo)) if step == 1 else self._read(lo, hi)[::step]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self._count if key < 0 else 0)
            if not 0 <= i < self._count:
                raise IndexError(f"index {int(key)} out of range for {self._count} tokens")
            return self._read(i, i + 1)[0]
        index = np.asarray(key)
        if index.size and (index.min() < 0 or index.max() >= self._count):
            raise IndexError(f"token index out of range for {self._count} tokens")
        rows = index.reshape(-1, index.shape[-1] if index.ndim else 1)
        out = np.empty(rows.shape, self.dtype)
        for r, row in enumerate(rows):  # one read per row: a window's chars are contiguous
            lo = int(row.min()) if row.size else 0
            out[r] = self._read(lo, int(row.max()) + 1 if row.size else 0)[row - lo]
        return out.reshape(index.shape)

    def __array__(self, dtype=None, copy=None):
        out = self._read(0, self._count)
        return out if dtype is None else out.astype(dtype)


def _entry(root: Path, key: str) -> tuple[Path, Path]:
    return root / f"{key}.tokens", root / f"{key}.json"


def _open(root: Path, key: str) -> tuple[np.ndarray, dict] | str:
    """The entry's ids and sidecar, or why it cannot be used."""
    tokens_path, info_path = _entry(root, key)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        n, dtype = int(info["tokens"]), _id_dtype(len(info["vocab"]))
        with open(tokens_path, "rb") as f:
            magic, fmt, width, count, stored_key = HEADER.unpack(f.read(HEADER.size))
            size = os.fstat(f.fileno()).st_size
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        return f"unreadable ({type(e).__name__})"
    if magic != MAGIC or fmt != FORMAT or stored_key != key.encode():
        return "not a charlm token file for this corpus"
    if width != dtype.itemsize or count != n:
        return "its header disagrees with its sidecar"
    if size != HEADER_BYTES + n * dtype.itemsize:
        return f"truncated ({size} bytes, {HEADER_BYTES + n * dtype.itemsize} expected)"
    ids = TokenFile(tokens_path, dtype, n)
    return (np.asarray(ids) if n * dtype.itemsize <= IN_MEMORY_MAX_BYTES else ids), info


def encode_corpus(paths: Sequence[str | os.PathLike], cleaning: Cleaning = Cleaning(), extend: Vocab | None = None,
                  root: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> EncodedCorpus:
    """The corpus of `paths` (joined as read_texts joins them) as cached ids, built on first use.

    The vocabulary is the cleaned text's sorted chars, or `extend` then the chars it lacks."""
    paths = [Path(p) for p in paths]
    root = Path(root) if root is not None else text_io.cache_dir() / "tokens"
    key = cache_key(paths, cleaning, extend)
    opened = _open(root, key)
    if isinstance(opened, str):
        if _entry(root, key)[1].exists() or _entry(root, key)[0].exists():
            log(f"Token cache {_entry(root, key)[0]} is {opened}; rebuilding it")
        opened = _build(root, key, paths, cleaning, extend, log)
    tokens, info = opened
    # An entry is shared by every run on the same bytes; the paths are this run's (the file that first
    # built the entry may since have moved or gone), the per-file counts the entry's.
    files = [{**record, "path": str(p.resolve())} for record, p in zip(info["files"], paths)]
    return EncodedCorpus(tokens, Vocab(info["vocab"]), info["fingerprint"], files, _entry(root, key)[0])


def _build(root: Path, key: str, paths: list[Path], cleaning: Cleaning, extend: Vocab | None,
           log: Callable[[str], None]) -> tuple[np.ndarray, dict]:
    import time

    started = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharlmError(f"cannot write the token cache {root}: {e.strerror}; set {text_io.CACHE_DIR_ENV} "
                          f"to a writable directory") from None
    cuts = [gutenberg_cut(p, cleaning) for p in paths]
    counts, fingerprint, per_file = _count(paths, cleaning, cuts)
    n_tokens = int(counts.sum())
    if n_tokens == 0:
        raise CharlmError("the text is empty after cleaning (was it only a Gutenberg header?)")
    chars = "".join(map(chr, np.flatnonzero(counts)))
    vocab = extend.extended(chars) if extend is not None else Vocab(chars)
    tokens_path, info_path = _entry(root, key)
    try:
        _write(tokens_path, key, paths, cleaning, cuts, vocab, n_tokens)
        info = {"format": FORMAT, "key": key, "tokens": n_tokens, "vocab": vocab.chars, "fingerprint": fingerprint,
                "files": _file_records(paths, cleaning, per_file), "cleaning": cleaning.__dict__}
        partial = info_path.with_name(f"{info_path.name}.part{os.getpid()}")
        partial.write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
        os.replace(partial, info_path)
    except OSError as e:
        raise CharlmError(f"cannot write the token cache {root}: {e.strerror}; set {text_io.CACHE_DIR_ENV} "
                          f"to a writable directory") from None
    log(f"Encoded {n_tokens:,} chars into the token cache {tokens_path} in {time.monotonic() - started:.1f}s")
    opened = _open(root, key)
    if isinstance(opened, str):
        raise CharlmError(f"the token cache {tokens_path} just written is {opened}")
    return opened
