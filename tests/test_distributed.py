"""Training on several processes (JAX's distributed runtime, gloo collectives on CPU): two
processes of two devices each, stopped after an epoch and resumed, give the losses of one
process with four devices trained straight through."""

import json

import pytest

from bench.distributed import launch
from conftest import TINY


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
