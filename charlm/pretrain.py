"""The recipe that builds the base model (`charlm-pretrain`, `python -m charlm.pretrain`).

Four stages, each a function: fetch the public-domain English sources through the system's
package manager, clean each to plain ASCII prose, mix them into one corpus file, pretrain under a
time budget (`charlm.train`, so `--resume` continues a run exactly), and export the best weights
as a small checkpoint with a model card and checksums (`charlm.base`).

Only prose: the King James Bible, Bierce's Devil's Dictionary, the Jargon File's entries and a
capped share of WordNet's glosses. Never Alice (the base must not have seen the text it is
fine-tuned and scored on), never program documentation or source code. Any text files and
Gutenberg books can be added (`--text`, `--gutenberg`) for a bigger base.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from charlm.cli import Parser, guarded, prepare_process
from charlm.errors import CharlmError

# The base model's vocabulary: newline and every printable ASCII char, so ordinary English text
# adds no rows. Trained lowercased; the export gives each capital its small letter's weights.
BASE_CHARS = "\n" + "".join(map(chr, range(32, 127)))


@dataclass(frozen=True)
class Source:
    name: str
    package: str       # the Debian package that ships it
    licence: str
    files: tuple[str, ...]
    extract: Callable[[], str]  # the raw prose, before ASCII folding


def _run(cmd: Sequence[str]) -> str:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True).stdout


def _kjv() -> str:
    # bible(1) prints the whole text from its compressed data file; drop the verse numbers (with the
    # blank lines: `\s*` spans them) and the "Genesis 1" headings, keep the verses as the wrapped
    # lines it prints. The shipped base was built with exactly these rules.
    text = _run(["bible", "Gen1:1-Rev22:21"])
    text = re.sub(r"(?m)^\s*\d+ ", "", text)
    return re.sub(r"(?m)^(?:[1-3] )?[A-Z][A-Za-z ]+ \d+\n", "", text)


def _dictd(name: str) -> str:
    text = gzip.open(f"/usr/share/dictd/{name}.dict.dz", "rt", encoding="utf-8").read()
    return re.sub(r"(?m)^00-database.*\n(?:http.*\n)?", "", text)


def _devil() -> str:
    return _dictd("devil")


def _jargon() -> str:
    text = _dictd("jargon")
    text = re.sub(r"(?m)^ /[^\n]*/,? ?(?:[a-z]+\.)?(?:, [a-z]+\.)*\n", "", text)  # pronunciation lines
    return text.replace("{", "").replace("}", "")  # cross-reference braces


WORDNET_CAP = 4_000_000  # chars of glosses: enough words defined, without definitions outweighing prose


def _wordnet(cap: int = WORDNET_CAP, seed: int = 0) -> str:
    glosses = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(f"/usr/share/wordnet/data.{pos}", encoding="latin-1"):
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            glosses.append(f"{head.split()[4].replace('_', ' ')}: {gloss.strip()}")
    random.Random(seed).shuffle(glosses)
    kept, total = [], 0
    for g in glosses:
        if total >= cap:
            break
        kept.append(g)
        total += len(g) + 1
    return "\n".join(kept) + "\n"


SOURCES = {s.name: s for s in (
    Source("kjv", "bible-kjv", "public domain (the 1611 translation); the bible(1) program GPL-2+",
           ("/usr/bin/bible", "/usr/lib/bible.data"), _kjv),
    Source("devil", "dict-devil", "public domain (Bierce, 1881-1906)", ("/usr/share/dictd/devil.dict.dz",), _devil),
    Source("jargon", "dict-jargon", "public domain (Jargon File 4.4.7)", ("/usr/share/dictd/jargon.dict.dz",),
           _jargon),
    Source("wordnet", "wordnet-base", "WordNet 3.0 licence (free to use, copy and distribute with its notice)",
           ("/usr/share/wordnet/data.noun",), _wordnet),
)}
DEFAULT_SOURCES = tuple(SOURCES)


def fetch(sources: Sequence[Source], log: Callable[[str], None] = print) -> None:
    """Installs the Debian packages whose files are missing (as root, with apt-get)."""
    missing = [s.package for s in sources if not all(Path(f).exists() for f in s.files)]
    if not missing:
        return
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid():
        raise CharlmError(f"the sources need Debian packages: run `sudo apt-get install {' '.join(missing)}`, "
                          f"or pass --sources with fewer of them")
    log(f"Installing {' '.join(missing)} with apt-get")
    for attempt in (["apt-get", "install", "-y", "-q", *missing], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", *missing]):
        done = subprocess.run(attempt, capture_output=True, text=True)
        if done.returncode == 0 and attempt[1] == "install":
            return
    raise CharlmError(f"apt-get could not install {' '.join(missing)}: {done.stderr.strip()[-300:]}")


def package_version(package: str) -> str:
    try:
        return _run(["dpkg-query", "-W", "-f=${Version}", package]).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


_ASCII_FOLD = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                             "\u2014": "--", "\u2026": "...", "\u00b7": "", "\u2122": "(TM)", "\t": "    ",
                             "\u00a0": " ", "\u00b4": "'"})


def to_ascii(text: str) -> str:
    """Curly quotes, dashes and accents folded to ASCII; any other char outside BASE_CHARS dropped."""
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_FOLD).replace("\r\n", "\n"))
    allowed = set(BASE_CHARS)
    return "".join(c for c in text if c in allowed)


def blocks(text: str, size: int = 2000) -> list[str]:
    """Paragraph runs of about `size` chars, so a shuffled mix keeps each source's prose in pieces."""
    out, cur = [], []
    n = 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        cur.append(para)
        n += len(para)
        if n >= size:
            out += _cut("\n\n".join(cur), size)
            cur, n = [], 0
    if cur:
        out.append("\n\n".join(cur))
    return out


def _cut(block: str, size: int) -> list[str]:
    """A long block (the Bible has no blank lines) cut at line ends into pieces of about `size`."""
    lines, out, cur = block.split("\n"), [], []
    n = 0
    for line in lines:
        cur.append(line)
        n += len(line) + 1
        if n >= size:
            out.append("\n".join(cur))
            cur, n = [], 0
    if cur:
        out.append("\n".join(cur))
    return out


def build_corpus(texts: dict[str, str], target: Path, seed: int = 0) -> dict[str, int]:
    """Writes the sources' blocks, shuffled together (so the validation slice at the end holds each
    source), to `target`; returns each source's chars."""
    pieces, sizes = [], {}
    for name, text in texts.items():
        text = to_ascii(text)
        sizes[name] = len(text)
        pieces += blocks(text)
    random.Random(seed).shuffle(pieces)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n\n".join(pieces) + "\n", encoding="utf-8")
    return sizes


# GRU(512) with an embedding, as `best`, so `--preset best --init-from base` changes no shape. Light
# regularisation: a few passes over millions of chars do not memorise.
PRETRAIN_OVERRIDES = dict(dropout=0.1, input_dropout=0.0, weight_drop=0.0, embed_dropout=0.0, variational=True,
                          val_frac=0.01, epochs=1000, learning_rate=2e-3, warmup_steps=200, weight_decay=0.01,
                          ema_decay=0.999)


def pretrain_config(max_time: float, **overrides):
    from charlm.config import make_run_config

    return make_run_config("best", **{**PRETRAIN_OVERRIDES, "max_time": max_time, **overrides})


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="charlm-pretrain", description="Build a base model of English prose to fine-tune from "
               "(train.py --init-from base).")
    p.add_argument("--sources", nargs="*", default=list(DEFAULT_SOURCES), choices=sorted(SOURCES),
                   help="Debian-packaged public-domain prose to include (default: all: %(default)s)")
    p.add_argument("--text", nargs="+", default=[], metavar="FILE", help="more text files to include")
    p.add_argument("--gutenberg", nargs="+", type=int, default=[], metavar="ID",
                   help="Project Gutenberg books to download (once, into the cache) and include")
    p.add_argument("--run-dir", default="pretrain-run", help="corpus, checkpoints and metrics (default: %(default)s)")
    p.add_argument("--max-time", type=float, default=60.0, metavar="MINUTES",
                   help="training budget, counting what a resumed run used (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir (same corpus)")
    p.add_argument("--hidden", type=int, help="GRU units (default: best's 512)")
    p.add_argument("--batch-size", type=int, help="streams per step (default: best's 32)")
    p.add_argument("--export", metavar="DIR", help="write the base model and its card here (default: "
                   "<run-dir>/base; charlm/models/base in a checkout replaces the shipped one)")
    p.add_argument("--seed", type=int, default=0, help="mixing order, init and dropout (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    prepare_process()
    args = parser().parse_args(argv)

    def run() -> int | None:
        from charlm import host

        host.tune_allocator()
        run_dir = Path(args.run_dir)
        corpus_file = run_dir / "corpus" / "base-corpus.txt"
        info_file = run_dir / "corpus" / "sources.json"
        if not args.resume:
            if run_dir.exists() and any(run_dir.iterdir()):
                raise CharlmError(f"{run_dir} is not empty; pass --resume to continue it or choose another --run-dir")
            sources = [SOURCES[n] for n in args.sources]
            fetch(sources)
            texts = {s.name: s.extract() for s in sources}
            from charlm.corpus import download_gutenberg, read_texts, strip_gutenberg

            for path in [Path(p) for p in args.text] + [download_gutenberg(i) for i in args.gutenberg]:
                texts[str(path)] = strip_gutenberg(read_texts([path])[0])
            sizes = build_corpus(texts, corpus_file, args.seed)
            info_file.write_text(json.dumps({"sources": [
                {"name": s.name, "debian_package": s.package, "version": package_version(s.package),
                 "licence": s.licence, "chars": sizes[s.name]} for s in sources] +
                [{"name": n, "chars": sizes[n]} for n in texts if n not in SOURCES]}, indent=1))
            print(f"Corpus: {corpus_file} ({sum(sizes.values()):,} chars: "
                  + ", ".join(f"{n} {c:,}" for n, c in sizes.items()) + ")")
        cfg = pretrain_config(args.max_time, seed=args.seed, hidden=args.hidden, batch_size=args.batch_size)
        from charlm.trainer import TextFiles, train

        result = train(TextFiles((corpus_file,)), cfg, run_dir / "ckpt", resume=args.resume, vocab=BASE_CHARS)
        if result.interrupted is not None:  # a half-trained model must not replace the base
            return 128 + result.interrupted
        from charlm.base import export_base

        out = Path(args.export) if args.export else run_dir / "base"
        command = "charlm-pretrain " + " ".join(argv if argv is not None else sys.argv[1:])
        export_base(run_dir, out, command=command, machine=_machine())
        print(f"Base model written to {out}")

    return guarded("charlm-pretrain", run)


def _machine() -> str:
    import os

    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} x {cpu}; jax {jax.__version__}, {jax.devices()[0].platform}"


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
