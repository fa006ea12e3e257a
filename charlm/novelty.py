"""How much of a sample is copied: the share of its n-char substrings found verbatim in the
training text (torch-rnn's novel_substrings, the other way round); and how well it spells: the
share of its words that are real, found in the training text or in a system word list.

The training text is the checkpoint's own: the file it records (or one the user names),
cleaned as training cleaned it, checked against the recorded fingerprint, and cut at the
recorded split, so validation and test text never count as "seen".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from charlm.config import RunConfig
from charlm.corpus import fingerprint
from charlm.errors import CharlmError

SIZES = (10, 20, 40)


def training_text(meta: dict, cfg: RunConfig, paths: str | list[str] | None = None, encoding: str = "utf-8",
                  errors: str = "strict") -> str:
    """The text the checkpoint was trained on, or a CharlmError that says why it is not at hand."""
    from charlm.checkpoint import read_training_text

    corpus = meta.get("corpus") or {}
    text, label = read_training_text(meta, cfg, [paths] if isinstance(paths, str) else paths, encoding, errors)
    if "fingerprint" in corpus and fingerprint(text) != corpus["fingerprint"]:
        raise CharlmError(f"{label} is not the text this checkpoint was trained on (its fingerprint differs); "
                          f"pass the training text with --text FILE")
    return text[:corpus["split"]] if corpus.get("split") else text


def verbatim_shares(samples: Sequence[str], train_text: str, sizes: Sequence[int] = SIZES) -> dict[int, float | None]:
    """{n: share of the samples' n-char substrings (with repeats) that occur in train_text};
    None where the samples are shorter than n."""
    shares: dict[int, float | None] = {}
    for n in sizes:
        grams = [s[i:i + n] for s in samples for i in range(len(s) - n + 1)]
        seen = {g: g in train_text for g in set(grams)}  # str.__contains__ is a fast C search
        shares[n] = sum(seen[g] for g in grams) / len(grams) if grams else None
    return shares


def novelty_line(shares: dict[int, float | None]) -> str:
    parts = [f"{n}-char {'n/a' if s is None else f'{100 * s:.1f}%'}" for n, s in shares.items()]
    return "Verbatim in the training text (share of the sample's substrings): " + ", ".join(parts)


WORD_LIST = Path("/usr/share/dict/words")  # Debian's wamerican and the like
_WORD = re.compile(r"[^\W\d_]{2,}")  # alphabetic runs of 2+ letters ("alice's" gives "alice")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def load_word_list(path: str | Path | None = WORD_LIST) -> frozenset[str] | None:
    """The lowercased words of a one-word-a-line list, or None where there is none."""
    if path is None or not Path(path).is_file():
        return None
    return frozenset(w for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
                     for w in words(line))


def real_word_share(samples: Sequence[str], train_text: str, word_list: frozenset[str] | None) -> tuple[float | None, int]:
    """(share of the samples' words found in train_text's words or the word list, how many words)."""
    known = set(words(train_text)) | (word_list or frozenset())
    found = [w for s in samples for w in words(s)]
    return (sum(w in known for w in found) / len(found) if found else None), len(found)


def real_words_line(share: float | None, count: int, word_list_path: str | Path | None) -> str:
    where = f"the training text or {word_list_path}" if word_list_path else \
        f"the training text (no word list at {WORD_LIST}; install one, e.g. Debian's wamerican)"
    shown = "n/a" if share is None else f"{100 * share:.1f}%"
    return f"Real words: {shown} of {count} (alphabetic runs of 2+ letters found in {where})"
