"""Training on several processes on one machine: 2 processes x 2 CPU devices against 1 x 4 (issue 13).

    python -m bench.distributed --out bench/results/distributed.json

Each layout is a real `train.py` run (gloo collectives between the processes, forced host
devices within each), on the same text, config and seed. Reported: every epoch's train loss
(the trajectories should agree to float reduction order) and the ms per step of each epoch,
from process 0's epoch lines. tests/test_distributed.py launches through `launch` too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What gloo's threads print on stdout as a process's collectives connect (one write per line).
GLOO_CONNECTED = re.compile(r"\[Gloo\] Rank \d+ is connected to \d+ peer ranks\. "
                            r"Expected number of connected peer ranks is : \d+\n?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, devices: int, args: list[str], timeout: float = 600, xla_flags: str = "") -> list[str]:
    """Runs `train.py ARGS` as `processes` processes of `devices` CPU devices each, on one machine;
    returns each process's stdout, less gloo's own "[Gloo] Rank i is connected" messages. A
    process that fails raises, with its stderr; none outlives the call.

    Python's stdout stays block-buffered: unbuffered, print() writes a line and its newline in
    two calls, gloo's threads can write their message in between, and a filter of whole lines
    then dropped the line with it (a CI run lost "Resuming at epoch 2" so). The messages are cut
    out of the text instead of dropping the lines they share."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {xla_flags}".strip()}
    env.pop("PYTHONUNBUFFERED", None)
    cluster = [] if processes == 1 else ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes",
                                         str(processes)]
    procs = [subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, *cluster,
                               *(["--process-id", str(i)] if cluster else [])],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:  # a hung collective must not outlive the caller
            p.kill()
    for i, (p, (_, err)) in enumerate(zip(procs, outs)):
        if p.returncode != 0:
            raise RuntimeError(f"process {i} of {processes} exited {p.returncode}: {err[-2000:]}")
    return [GLOO_CONNECTED.sub("", out) for out, _ in outs]


def epoch_figures(stdout: str) -> list[dict]:
    return [{"epoch": int(m.group(1)), "ms_per_step": int(m.group(2)), "train_loss": float(m.group(3))}
            for m in re.finditer(r"^Epoch (\d+)/\d+ - \d+s - (\d+)ms/step .*?: ([0-9.]+)", stdout, re.MULTILINE)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=str(REPO.parent / "shared" / "data" / "wonderland.txt"))
    p.add_argument("--chars", type=int, default=20_000, help="train on the text's first N chars")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "distributed.json"))
    a = p.parse_args()
    # Small: with 4 devices forced onto this machine's 2 cores, XLA:CPU aborts a 1x128, 100-char
    # run in a cross-device rendezvous ("only 3 of 4 threads arrived" within 40 s); 5ccbb8e,
    # before multi-process training existed, does the same.
    config = ["--hidden", "32", "--seq-length", "25", "--batch-size", "64", "--epochs", str(a.epochs), "--seed", "0"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="charlm-bench-dist-") as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(Path(a.text).read_text(encoding="utf-8")[:a.chars], encoding="utf-8")
        for processes, devices in ((1, 4), (2, 2)):
            name = f"{processes}x{devices}"
            print(f"distributed: {name} ...", file=sys.stderr, flush=True)
            out = launch(processes, devices, ["--text", str(text), *config, "--ckpt-dir", str(Path(tmp) / name)])[0]
            results[name] = epoch_figures(out)
    record = {"config": config, "chars": a.chars, "layouts": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(record, indent=1))
    print(f"{'epoch':>5s} " + " ".join(f"{n + ' loss':>12s} {n + ' ms/step':>14s}" for n in results))
    for rows in zip(*results.values()):
        print(f"{rows[0]['epoch']:5d} " + " ".join(f"{r['train_loss']:12.4f} {r['ms_per_step']:14d}" for r in rows))


if __name__ == "__main__":
    main()
