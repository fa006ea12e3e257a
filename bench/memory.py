"""Peak RSS of a real charlm training run against corpus size, for bench.run.

Synthetic corpora (the book's words in a random order, written to a temp dir and deleted
after use; no text is kept) of each size go through the real `train.py --epochs 1
--max-time M --no-strip` in a child process, whose own peak RSS comes from os.wait4, twice:
first with an empty token cache (it encodes the corpus: `encode_s`), then again on the same
corpus, which reuses the cache (`start_s`: seconds from launch to the "Training" line). The
figures: peak RSS, RSS per MB of text, and the slope between sizes (MB of RSS per extra
MB of text), which is what grows when the corpus does.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
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
    """Two train.py runs per corpus size (cold and warm token cache), smallest first; a failed or
    killed run is recorded, not raised."""
    words = np.array(clean_text(read_text(text_path)).split(), dtype=object)
    results = []
    with tempfile.TemporaryDirectory(prefix="charlm-bench-mem-") as tmp:
        for i, size in enumerate(sorted(sizes_mb)):
            corpus = Path(tmp) / f"corpus-{size:g}MB.txt"
            nbytes = synth_corpus(corpus, size, words, seed=i)
            env = {**os.environ, "CHARLM_CACHE_DIR": str(Path(tmp) / f"cache-{i}")}
            runs = []
            for cache in ("cold", "warm"):
                cmd = [sys.executable, "train.py", "--text", str(corpus), "--epochs", "1", "--max-time",
                       f"{max_time_min:g}", "--ckpt-dir", str(Path(tmp) / f"ckpt-{i}-{cache}"), "--no-strip"]
                log(f"memory: train.py on {nbytes / MB:.1f} MB of synthetic text, {cache} token cache ...")
                runs.append(run_child(cmd, str(repo), timeout, env=env, mark="Training "))
            corpus.unlink()
            shutil.rmtree(Path(tmp) / f"cache-{i}", ignore_errors=True)
            cold, warm = runs
            steps = re.search(r"after (\d+) steps", cold["stdout"])
            encoded = re.search(r"^Encoded .* in ([0-9.]+)s$", cold["stdout"], re.MULTILINE)
            results.append({"corpus_mb": nbytes / MB, "peak_rss_mb": max(r["child_peak_rss_mb"] for r in runs),
                            "cold_peak_rss_mb": cold["child_peak_rss_mb"], "warm_peak_rss_mb": warm["child_peak_rss_mb"],
                            "rss_mb_per_text_mb": max(r["child_peak_rss_mb"] for r in runs) / (nbytes / MB),
                            "encode_s": float(encoded.group(1)) if encoded else None,
                            "cold_start_s": cold["mark_s"], "warm_start_s": warm["mark_s"],
                            "warm_reencoded": "Encoded " in warm["stdout"],
                            "wall_s": cold["wall_s"], "rc": max(cold["rc"], warm["rc"], key=abs),
                            "timed_out": max(r["wall_s"] for r in runs) >= timeout,
                            "steps": int(steps.group(1)) if steps else None,
                            "other_cores": max(r["other_cores"] for r in runs), "cmd": " ".join(cmd[1:]),
                            **({"stderr_tail": cold["stderr_tail"] + warm["stderr_tail"]}
                               if cold["rc"] or warm["rc"] else {})})
    for prev, cur in itertools.pairwise(results):
        cur["slope_mb_per_text_mb"] = (cur["peak_rss_mb"] - prev["peak_rss_mb"]) / (cur["corpus_mb"] - prev["corpus_mb"])
    return results
