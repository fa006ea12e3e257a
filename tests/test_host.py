"""charlm.host: glibc's allocator set up by training (not by import or sampling; not at all on request),
and the XLA:CPU compile options leaving the losses as they are."""

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from charlm.config import make_run_config
from charlm.data import gather_batch
from charlm.host import COMPILER_OPTIONS
from charlm.training import _step, create_train_state, train_step

REPO = Path(__file__).resolve().parents[1]

# A fresh interpreter: what importing charlm did (nothing to glibc, and JAX not started: the
# tuning only reaches threads started after it), what charlm.train did to the allocator on a
# few hundred chars, and two train steps' losses after it.
CHILD = """
import json, sys, tempfile
import charlm
from jax._src import xla_bridge
on_import = charlm.allocator_status(), xla_bridge.backends_are_initialized()
cfg = charlm.make_run_config(hidden=8, seq_length=8, batch_size=16, epochs=1)
charlm.train("alice was beginning to get very tired of sitting by her sister " * 8, cfg,
             tempfile.mkdtemp() + "/run", log=lambda line: None, handle_signals=False)
sys.path.insert(0, "tests")
from test_host import two_step_losses
print(json.dumps({"on_import": on_import, "status": charlm.allocator_status(), "losses": two_step_losses()}))
"""


def tiny_setup():
    cfg = make_run_config(hidden=16, seq_length=8, batch_size=16, dropout=0.1)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=5))
    return cfg, gather_batch(np.arange(200, dtype=np.int32) % 5, np.arange(16), 8)


def two_step_losses(step=train_step):
    cfg, batch = tiny_setup()
    state, losses = create_train_state(cfg, jax.random.key(0)), []
    for _ in range(2):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return losses


def run_child(allocator: str) -> dict:
    env = {**os.environ, "CHARLM_ALLOCATOR": allocator, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator settings are glibc's")
def test_training_tunes_the_allocator_not_the_import_and_system_opts_out_with_the_same_losses():
    tuned, system = run_child("tuned"), run_child("system")
    assert tuned["on_import"] == ["not tuned yet", False]
    assert tuned["status"] == "tuned"
    assert system["status"] == "system (CHARLM_ALLOCATOR=system)"
    assert tuned["losses"] == system["losses"]


def test_train_step_with_and_without_the_compile_options_gives_the_same_losses():
    assert COMPILER_OPTIONS, "nothing to compare"
    plain = jax.jit(functools.partial(_step, objective="last", carry=None))
    with_options = two_step_losses()
    without = two_step_losses(lambda state, batch, rng: plain(state, batch, rng)[:2])
    np.testing.assert_allclose(with_options, without, rtol=1e-6)
