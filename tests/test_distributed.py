"""Training on several processes (JAX's distributed runtime, gloo collectives on CPU): two
processes of two devices each, stopped after an epoch and resumed, give the losses of one
process with four devices trained straight through."""

import json
import os
import re
import socket
import subprocess
import sys
import pytest

from conftest import REPO, TINY

# What gloo's threads print on stdout as a process's collectives connect (one write per line).
GLOO_CONNECTED = re.compile(r"\[Gloo\] Rank \d+ is connected to \d+ peer ranks\. "
                            r"Expected number of connected peer ranks is : \d+\n?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, devices: int, args: list[str], timeout: float = 600) -> list[str]:
    """Runs `train.py ARGS` as `processes` processes of `devices` CPU devices each, on one machine;
    returns each process's stdout, less gloo's own "[Gloo] Rank i is connected" messages. A
    process that fails raises, with its stderr; none outlives the call.

    Python's stdout stays block-buffered: unbuffered, print() writes a line and its newline in
    two calls, gloo's threads can write their message in between, and a filter of whole lines
    then dropped the line with it (a CI run lost "Resuming at epoch 2" so). The messages are cut
    out of the text instead of dropping the lines they share."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
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


def losses(ckpt) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (ckpt / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_of_two_devices_train_as_one_of_four_and_resume_exactly(tmp_path, small_text_file):
    def run(processes, devices, name, *extra):
        return launch(processes, devices, ["--text", str(small_text_file), *TINY, "--ckpt-dir", str(tmp_path / name),
                                           *extra], timeout=240)
    assert "on 4 CPU devices" in run(1, 4, "1x4")[0]
    run(2, 2, "2x2", "--epochs", "1")  # stopped after epoch 1 ...
    outs = run(2, 2, "2x2", "--resume")  # ... and resumed to the end
    assert "Resuming at epoch 2" in outs[0] and "on 4 CPU devices" in outs[0]
    assert not any(word in outs[1] for word in ("Total", "Epoch", "Best"))  # process 0 speaks for the run
    assert losses(tmp_path / "2x2") == pytest.approx(losses(tmp_path / "1x4"), rel=1e-5)
