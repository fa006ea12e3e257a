"""Interruptions and exact resume: SIGINT/SIGTERM/SIGKILL, per-step loss equivalence, divergence, failed saves."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import charlm.trainer as trainer
from charlm import checkpoint
from charlm.config import make_run_config
from charlm.errors import CharlmError, Interrupted
from charlm.resume import StopRequests
from tests.conftest import REPO, without_compilation_cache

STEPS = {name: getattr(trainer, name) for name in ("train_step", "stateful_train_step")}  # the real ones
BASE = dict(hidden=16, seq_length=10, batch_size=8, epochs=3, dropout=0.2, seed=3)


@pytest.fixture(scope="module")
def text(wonderland_path):
    return wonderland_path.read_text(encoding="utf-8")[:1500]


def tree_hash(path):
    """A hash of every file under path (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


class Crash(Exception):
    pass


def recorded_run(monkeypatch, text, run_dir, cfg, *, interrupt_after=None, crash_after=None, resume=False,
                 **train_kw):
    """Trains, recording each step's loss; with interrupt_after=k, sends SIGINT to itself after step k;
    with crash_after=k, dies (an exception nobody handles, like a power cut) after step k."""
    losses = []
    for name, real in STEPS.items():
        def wrapped(*args, _real=real, **kw):
            out = _real(*args, **kw)
            losses.append(float(out[1]["loss"]))
            if interrupt_after is not None and len(losses) == interrupt_after:
                os.kill(os.getpid(), signal.SIGINT)
            if crash_after is not None and len(losses) == crash_after:
                raise Crash
            return out
        monkeypatch.setattr(trainer, name, wrapped)
    lines = []
    result = trainer.train(text, cfg, run_dir, resume=resume, log=lines.append, progress=False, **train_kw)
    return result, losses, lines


# The runs that save after every step (save_every_minutes=0) use less text: ~36 steps an epoch, not 186.
SAVES_EVERY_STEP_CHARS = 300
STATEFUL = dict(objective="all", stateful=True, val_frac=0.1)


# every regulariser on, and the weight average whose raw weights the last checkpoint keeps
REGULARISED = dict(STATEFUL, input_encoding="embed", variational=True, input_dropout=0.1, weight_drop=0.3,
                   embed_dropout=0.1, weight_decay=0.1, ema_decay=0.9, test_frac=0.1)


@pytest.mark.parametrize("mode, where", [(dict(), "mid"), (STATEFUL, "mid"), (STATEFUL, "end"), (REGULARISED, "mid"),
                                         (dict(REGULARISED, cell="rnn"), "mid")],
                         ids=["shuffled-windows", "stateful-streams+val", "stateful-at-an-epoch-end",
                              "regularised+averaged", "rnn-regularised+averaged"])
def test_interrupted_and_resumed_run_has_the_same_per_step_losses(monkeypatch, text, tmp_path, mode, where):
    cfg = make_run_config(**BASE, **mode)
    whole, whole_losses, _ = recorded_run(monkeypatch, text, tmp_path / "whole", cfg)
    steps_per_epoch = len(whole_losses) // BASE["epochs"]
    cut = steps_per_epoch + 2 if where == "mid" else steps_per_epoch  # inside epoch 2, or on epoch 1's last step
    first, first_losses, lines = recorded_run(monkeypatch, text, tmp_path / "cut", cfg, interrupt_after=cut)
    assert first.interrupted == signal.SIGINT and len(first_losses) == cut
    assert any("SIGINT received" in l and "--resume" in l for l in lines)
    assert any(f"epoch {1 if where == 'end' else 2}" in l for l in lines if "SIGINT received" in l)
    rest, rest_losses, lines = recorded_run(monkeypatch, text, tmp_path / "cut", cfg, resume=True)
    assert any(l.startswith("Resuming at epoch") for l in lines)
    assert first_losses + rest_losses == whole_losses  # bit-exact on CPU
    for a, b in zip(jax.tree.leaves((rest.state.params, rest.state.ema_params)),
                    jax.tree.leaves((whole.state.params, whole.state.ema_params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert rest.best_loss == whole.best_loss


def test_a_crash_mid_epoch_loses_only_the_steps_since_the_periodic_save(monkeypatch, text, tmp_path):
    cfg, text = make_run_config(**BASE), text[:SAVES_EVERY_STEP_CHARS]
    _, whole_losses, _ = recorded_run(monkeypatch, text, tmp_path / "whole", cfg)
    crash = len(whole_losses) // 2 + 1  # in the middle of epoch 2
    with pytest.raises(Crash):  # saves the last checkpoint after every step (save_every_minutes=0)
        recorded_run(monkeypatch, text, tmp_path / "crash", cfg, crash_after=crash, save_every_minutes=0)
    position = json.loads(next((tmp_path / "crash" / "last").glob("*/meta/metadata")).read_text())["position"]
    _, rest_losses, _ = recorded_run(monkeypatch, text, tmp_path / "crash", cfg, resume=True)
    # The step that crashed ran but was never saved, so the resumed run repeats it, then goes on exactly.
    assert rest_losses == whole_losses[crash - 1:]
    assert position["batch"] > 0  # the save was within the epoch, not at its end


def test_a_time_budget_stop_resumes_exactly_and_a_used_up_budget_is_refused(monkeypatch, text, tmp_path):
    cfg = make_run_config(**BASE)
    _, whole_losses, _ = recorded_run(monkeypatch, text, tmp_path / "whole", cfg)
    budget = make_run_config(**BASE, max_time=0.001)  # crossed by the first (compiling) step
    _, first_losses, lines = recorded_run(monkeypatch, text, tmp_path / "cut", budget)
    assert any("Time budget of 0.001 min reached during epoch 1, batch 1 of" in l for l in lines)
    with pytest.raises(CharlmError, match="has used its --max-time of 0.001 min"):
        trainer.train(text, budget, tmp_path / "cut", resume=True, log=lambda s: None, progress=False)
    _, rest_losses, lines = recorded_run(monkeypatch, text, tmp_path / "cut", cfg, resume=True)
    assert any(l.startswith("Resuming at epoch 1, batch 1 of") for l in lines)
    assert first_losses + rest_losses == whole_losses


def test_a_death_between_the_best_save_and_the_last_save_resumes_exactly(monkeypatch, text, tmp_path):
    cfg, text = make_run_config(**BASE), text[:SAVES_EVERY_STEP_CHARS]
    _, whole_losses, _ = recorded_run(monkeypatch, text, tmp_path / "whole", cfg)
    steps_per_epoch = len(whole_losses) // BASE["epochs"]
    real_save_last = checkpoint.save_last

    def dies_at_the_epoch_end(run_dir, state, meta, carry=None):
        if meta["position"]["batch"] == 0:  # best/1 is already written; last still says "inside epoch 1"
            raise Crash
        return real_save_last(run_dir, state, meta, carry)
    monkeypatch.setattr(checkpoint, "save_last", dies_at_the_epoch_end)
    with pytest.raises(Crash):
        recorded_run(monkeypatch, text, tmp_path / "cut", cfg, save_every_minutes=0)
    monkeypatch.setattr(checkpoint, "save_last", real_save_last)
    assert checkpoint.latest_step(tmp_path / "cut")[1] == 1
    _, rest_losses, lines = recorded_run(monkeypatch, text, tmp_path / "cut", cfg, resume=True)
    assert rest_losses == whole_losses[steps_per_epoch - 1:]  # the unsaved last step of epoch 1, then on
    assert any("Epoch 00001: loss did not improve" in l for l in lines)  # epoch 1 again: not a new best


def test_resume_refuses_a_different_text_naming_the_fingerprint(monkeypatch, text, tmp_path):
    cfg = make_run_config(**{**BASE, "epochs": 1})
    trainer.train(text, cfg, tmp_path, log=lambda s: None, progress=False)
    edited = text.replace("alice", "alicf", 1).replace("Alice", "Alicf", 1)
    with pytest.raises(CharlmError, match=r"the text differs from the one the checkpoint in .* was trained on "
                                          r"\(fingerprint"):
        trainer.train(edited, make_run_config(**{**BASE, "epochs": 2}), tmp_path, resume=True,
                      log=lambda s: None, progress=False)


def test_non_finite_loss_stops_with_advice_and_keeps_checkpoints(monkeypatch, text, tmp_path):
    cfg = make_run_config(**BASE)
    trainer.train(text, make_run_config(**{**BASE, "epochs": 1}), tmp_path, log=lambda s: None, progress=False)
    before = tree_hash(tmp_path / "best"), tree_hash(tmp_path / "last")
    real = STEPS["train_step"]

    def poisoned(state, batch, rng, objective):
        state, metrics = real(state, batch, rng, objective=objective)
        return state, {**metrics, "loss": metrics["loss"] * np.nan}
    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(CharlmError, match=r"diverged at epoch 2, step \d+ .*NaN.*kept the best checkpoint.*"
                                          r"--lr \(now 0.001\) or --clip-norm"):
        trainer.train(text, cfg, tmp_path, resume=True, log=lambda s: None, progress=False)
    assert (tree_hash(tmp_path / "best"), tree_hash(tmp_path / "last")) == before


def test_a_failed_save_stops_training_and_keeps_the_previous_best(monkeypatch, text, tmp_path):
    cfg = make_run_config(**{**BASE, "epochs": 1})
    trainer.train(text, cfg, tmp_path, log=lambda s: None, progress=False)
    before = tree_hash(tmp_path / "best")
    import orbax.checkpoint as ocp

    def disk_full(self, *args, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full)
    with pytest.raises(CharlmError, match="could not save a checkpoint .*No space left on device.*previous "
                                          "checkpoints are kept"):
        trainer.train(text, make_run_config(**{**BASE, "epochs": 2}), tmp_path, resume=True,
                      log=lambda s: None, progress=False)
    assert tree_hash(tmp_path / "best") == before
    checkpoint.restore(tmp_path)  # still readable


# --- the real CLI, signalled from outside ---------------------------------------------------------

TRAIN_ARGS = ["--hidden", "16", "--seq-length", "10", "--batch-size", "8", "--seed", "0"]


def start_training(text_file, ckpt, epochs, *extra):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), "--text", str(text_file), "--ckpt-dir", str(ckpt),
                             "--epochs", str(epochs), *TRAIN_ARGS, *extra], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**without_compilation_cache(), "PYTHONUNBUFFERED": "1"})


def wait_for_line(proc, fragment, timeout=120):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if fragment in line:
            return seen
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{fragment!r} never printed; got {''.join(seen)}")


@pytest.fixture
def text_file(tmp_path, text):
    path = tmp_path / "t.txt"
    path.write_text(text * 4, encoding="utf-8")  # long enough epochs to be signalled in the middle
    return path


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_last_checkpoint_exits_128_plus_signal_and_resumes(tmp_path, text_file, sig, code):
    ckpt = tmp_path / "ck"
    proc = start_training(text_file, ckpt, 50)
    wait_for_line(proc, "Epoch 00001:")  # the first epoch ended and saved
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"{signal.Signals(sig).name} received" in out and "--resume" in out
    position = checkpoint.read_meta(checkpoint.find_last(ckpt))["position"]
    resumed = subprocess.run([sys.executable, str(REPO / "train.py"), "--text", str(text_file), "--ckpt-dir",
                              str(ckpt), "--epochs", str(position["epoch"]), *TRAIN_ARGS, "--resume"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)  # finish the epoch it stopped in
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming at epoch {position['epoch']}, batch {position['batch']} of" in resumed.stdout


def test_a_second_signal_stops_at_once_and_exits_128_plus_that_signal(capsys):
    from charlm.cli import guarded

    def train_and_signal_twice():
        with StopRequests() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here
            assert stop.signal == signal.SIGTERM  # the first one is only a request
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the second one must not wait for the loop
            raise AssertionError("a second SIGTERM did not interrupt")

    try:  # caught as the CLI catches it: a bare KeyboardInterrupt would end the pytest session
        train_and_signal_twice()
    except KeyboardInterrupt as e:
        raised = e
    assert isinstance(raised, Interrupted) and raised.signum == signal.SIGTERM
    assert guarded("train.py", train_and_signal_twice) == 143
    assert capsys.readouterr().err == "train.py: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_sigkill_at_random_points_never_breaks_the_checkpoints(tmp_path, text_file):
    """Kills training at random moments, checks what is on disk, resumes; repeats until two kills
    have landed inside an orbax save (a half-written tmp dir left behind). The last checkpoint is
    saved after every step (--save-every 1e-4), so most of the run is spent inside saves."""
    ckpt = tmp_path / "ck"
    rng = random.Random(0)
    kills = in_save = 0
    while in_save < 2 and kills < 10:
        resume = ["--resume"] if checkpoint.find_last(ckpt) or checkpoint.latest_step(ckpt) else []
        proc = start_training(text_file, ckpt, 200, "--save-every", "1e-4", *resume)
        wait_for_line(proc, "Training ")
        time.sleep(rng.uniform(2.0, 5.0))
        proc.kill()
        proc.communicate()
        kills += 1
        in_save += any("tmp" in p.name for slot in ("best", "last") if (ckpt / slot).is_dir()
                       for p in (ckpt / slot).iterdir())
        if checkpoint.latest_step(ckpt):
            checkpoint.restore(ckpt)  # the best checkpoint is always readable
        if checkpoint.find_last(ckpt):
            checkpoint.restore(checkpoint.find_last(ckpt))  # and so is the last one
    assert in_save >= 1, f"none of {kills} kills landed inside a save"
    in_progress = checkpoint.read_meta(checkpoint.find_last(ckpt))["position"]["epoch"]
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "--text", str(text_file), "--ckpt-dir", str(ckpt),
                           "--epochs", str(in_progress), *TRAIN_ARGS, "--resume"],  # finish the epoch in progress
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sample = subprocess.run([sys.executable, str(REPO / "sample.py"), "--ckpt", str(ckpt), "--length", "20"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0, sample.stderr
