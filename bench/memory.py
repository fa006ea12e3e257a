"""Peak RSS of a real charlm training run against corpus size, for bench.run.

Synthetic corpora (the book's words in a random order, written to a temp dir and deleted
after use; no text is kept) of each size go through the real `train.py --epochs 1
--max-time M --no-strip` in a child process, whose own peak RSS comes from os.wait4. The
figures: peak RSS, RSS per MB of text, and the slope between sizes (MB of RSS per extra
MB of text), which is what grows when the corpus does.
"""

from __future__ import annotations

import itertools
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.perfkit import run_child
from charlm.corpus import clean_text, read_text

MB = 1_000_000
WORDS_PER_LINE = 12


def synth_corpus(path: Path, megabytes: float, words: np.ndarray, seed: int = 0) -> int:
    """Writes about `megabytes` MB of `words` drawn at random, 12 to a line; returns the bytes written."""
    rng = np.random.default_rng(seed)
    mean_len = np.mean([len(w) for w in words]) + 1
    target, written = int(megabytes * MB), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            chunk = words[rng.integers(0, len(words), size=int(min(MB, target - written) / mean_len) + 1)].tolist()
            chunk[WORDS_PER_LINE - 1::WORDS_PER_LINE] = [w + "\n" for w in chunk[WORDS_PER_LINE - 1::WORDS_PER_LINE]]
            text = " ".join(chunk) + "\n"
            f.write(text)
            written += len(text.encode("utf-8"))
    return written


def measure(text_path: str, sizes_mb: list[float], max_time_min: float, repo: Path, timeout: float,
            log=print) -> list[dict]:
    """One train.py run per corpus size, smallest first; a failed or killed run is recorded, not raised."""
    words = np.array(clean_text(read_text(text_path)).split(), dtype=object)
    results = []
    with tempfile.TemporaryDirectory(prefix="charlm-bench-mem-") as tmp:
        for i, size in enumerate(sorted(sizes_mb)):
            corpus = Path(tmp) / f"corpus-{size:g}MB.txt"
            nbytes = synth_corpus(corpus, size, words, seed=i)
            cmd = [sys.executable, "train.py", "--text", str(corpus), "--epochs", "1", "--max-time", f"{max_time_min:g}",
                   "--ckpt-dir", str(Path(tmp) / f"ckpt-{i}"), "--no-strip"]
            log(f"memory: train.py on {nbytes / MB:.1f} MB of synthetic text ...")
            child = run_child(cmd, str(repo), timeout)
            corpus.unlink()
            steps = re.search(r"after (\d+) steps", child["stdout"])
            results.append({"corpus_mb": nbytes / MB, "peak_rss_mb": child["child_peak_rss_mb"],
                            "rss_mb_per_text_mb": child["child_peak_rss_mb"] / (nbytes / MB),
                            "wall_s": child["wall_s"], "rc": child["rc"], "timed_out": child["wall_s"] >= timeout,
                            "steps": int(steps.group(1)) if steps else None, "other_cores": child["other_cores"],
                            "cmd": " ".join(cmd[1:]), **({"stderr_tail": child["stderr_tail"]} if child["rc"] else {})})
    for prev, cur in itertools.pairwise(results):
        cur["slope_mb_per_text_mb"] = (cur["peak_rss_mb"] - prev["peak_rss_mb"]) / (cur["corpus_mb"] - prev["corpus_mb"])
    return results
