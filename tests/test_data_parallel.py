"""Data parallelism over 4 forced CPU devices: the same losses as one device, and checkpoints that restore on one."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

from charlm import checkpoint
from charlm.sampling import generate
from tests.conftest import REPO

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import charlm.trainer as trainer
    from charlm.config import make_run_config

    text = open(sys.argv[1], encoding="utf-8").read()[:1500]
    real = trainer.train_step
    out = {"devices": jax.device_count()}
    for name, parallel in (("one", False), ("sharded", True)):
        losses = []
        def step(*a, **kw):
            state, metrics = real(*a, **kw)
            losses.append(float(metrics["loss"]))
            return state, metrics
        trainer.train_step = step
        lines = []
        cfg = make_run_config(hidden=16, seq_length=10, batch_size=8, epochs=2, dropout=0.2, seed=1)
        trainer.train(text, cfg, sys.argv[2] + "/" + name, log=lines.append, progress=False, data_parallel=parallel)
        out[name] = {"losses": losses, "lines": lines}
    print(json.dumps(out))
""")


def test_sharded_steps_match_one_device_and_checkpoints_restore_on_one(tmp_path, wonderland_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(wonderland_path), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    assert any("on 4 CPU devices" in l for l in out["sharded"]["lines"])
    assert any("on 1 CPU device:" in l for l in out["one"]["lines"])
    one, sharded = np.array(out["one"]["losses"]), np.array(out["sharded"]["losses"])
    assert len(one) == len(sharded) > 20
    np.testing.assert_allclose(sharded, one, rtol=2e-4)  # the same trajectory, up to reduction order
    # Written under sharding, read here on this process's single device.
    state, cfg, vocab, meta = checkpoint.restore(tmp_path / "sharded")
    assert jax.device_count() == 1
    assert len(generate(state.params, cfg, vocab, meta["seeds"][0], length=20)[0]) == 20
