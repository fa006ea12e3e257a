"""GPU figures for issue 14 (run by bench/gpu.sh on a lent device; also runs on a CPU, slowly).

    python -m bench.gpu --out $OUT/gpu.json [--tiny]

In one process per framework: charlm f32 and bf16 and the PyTorch peer (cuDNN's LSTM on a GPU)
train steps for seed-small, seed-big and dense-small at the seed batch sizes and at batch 1024,
on the benchmark's fixed batches (bench/perfkit.py); one-stream and 64-stream sampling; and the
seed-big tutorial run's projected wall time (50 epochs at batch 64, from the timed steps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench import perfkit

BATCHES = (None, 1024)  # None: the setup's own


def time_train(impl: str, make_step, tokens, vocab_size: int, warmup: int, steps: int) -> list[dict]:
    rows = []
    for name, setup in perfkit.SETUPS.items():
        for batch in BATCHES:
            s = setup if batch is None else perfkit.Setup(**{**setup.__dict__, "batch": batch})
            t0 = time.perf_counter()
            timing = perfkit.time_steps(make_step(s, vocab_size), perfkit.fixed_batches(tokens, s, 1 + warmup + steps),
                                        1 + warmup)
            rows.append({"impl": impl, "setup": name, "batch": s.batch, "step_s": timing["step_s"],
                         "first_step_s": timing["first_step_s"], "windows_per_s": s.batch / timing["step_s"],
                         "epoch_s": perfkit.windows_per_epoch(len(tokens), s) * timing["step_s"] / s.batch,
                         "wall_s": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=perfkit.DEFAULT_TEXT)
    p.add_argument("--out", required=True)
    p.add_argument("--framework", choices=["charlm", "torch"], required=True)
    p.add_argument("--tiny", action="store_true", help="a check of the script on a CPU: 1 timed step, few chars")
    a = p.parse_args()
    warmup, steps, chars = (1, 1, 20) if a.tiny else (5, 30, 1000)
    tokens, vocab_size = perfkit.load_tokens(a.text)
    args = argparse.Namespace(chars=chars, window_chars=min(chars, 100), streams=64, reps=1 if a.tiny else 3)
    record: dict = {"framework": a.framework}
    if a.framework == "charlm":
        from bench import charlm_peer

        record["versions"] = charlm_peer.versions()
        record["train"] = []
        for precision in ("float32", "bfloat16"):  # charlm_peer reads it per step maker
            os.environ["CHARLM_BENCH_PRECISION"] = precision
            record["train"] += time_train(f"charlm-{precision}", charlm_peer.make_step, tokens, vocab_size, warmup, steps)
        os.environ["CHARLM_BENCH_PRECISION"] = "float32"
        record["sample"] = charlm_peer.sample(args, tokens, vocab_size)
    else:
        from bench.peers import torch_peer

        record["versions"] = torch_peer.versions()
        record["train"] = time_train("torch", torch_peer.make_step, tokens, vocab_size, warmup, steps)
        record["sample"] = torch_peer.sample(args, tokens, vocab_size)
    big = next(r for r in record["train"] if r["setup"] == "seed-big" and r["batch"] == 64)
    record["seed_big_50_epochs_projected_s"] = 50 * big["epoch_s"]
    Path(a.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
