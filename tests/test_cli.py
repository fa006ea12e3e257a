"""train.py and sample.py run as subprocesses, as a user runs them: the happy path and bad input."""

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_cli


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def assert_one_line_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert re.match(r"(train\.py|sample\.py|(python -m )?charlm\.evaluate): error: ", lines[0]), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def test_train_prints_the_tutorial_summary_and_epoch_lines(trained_run):
    _, _, ck, result = trained_run
    out = result.stdout
    assert "Total Characters: 2921\nTotal Vocab: " in out  # 3,000 chars less the 79-char START line
    assert "Total Patterns: 2911" in out
    assert "Epoch 1/2" in out and "train loss (last-char):" in out
    assert "loss improved from inf to" in out
    assert (ck / "metrics.jsonl").read_text().count("\n") == 2
    assert "Traceback" not in result.stderr


def test_sample_prints_seed_and_1000_chars(trained_run):
    _, _, ck, _ = trained_run
    result = run_cli("sample.py", "--ckpt", str(ck), "--seed", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0].startswith('Seed: "')
    seed_end = result.stdout.index('"\n', 7)
    generated = result.stdout[seed_end + 2:]
    assert generated.endswith("\n\nDone.\n")
    assert len(generated) == 1000 + len("\n\nDone.\n")
    again = run_cli("sample.py", "--ckpt", str(ck), "--seed", "1")
    assert again.stdout == result.stdout, "--seed makes sampling reproducible"


def test_sample_options_reach_the_sampler(trained_run):
    """The CLI prints exactly what the library draws with the same flags: every flag arrived."""
    from charlm.checkpoint import restore
    from charlm.config import SamplingSettings
    from charlm.sampling import generate

    _, _, ck, _ = trained_run
    result = run_cli("sample.py", "--ckpt", str(ck), "--prime", "Alice was", "--length", "50",
                     "--temperature", "0.8", "--top-k", "5", "--repetition-penalty", "1.2", "--num-samples", "3",
                     "--seed", "2", "--context", "window")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('Seed: "Alice was"\n--- sample 1/3 ---\n')
    state, cfg, vocab, _ = restore(ck)
    texts = generate(state.params, cfg, vocab, "Alice was", SamplingSettings(0.8, top_k=5, repetition_penalty=1.2),
                     length=50, seed=2, num_samples=3, context="window")
    expected = "".join(f"--- sample {i + 1}/3 ---\n{t}\n" for i, t in enumerate(texts))
    assert result.stdout == f'Seed: "Alice was"\n{expected}\nDone.\n'


def test_resume_continues_from_the_best_epoch(trained_run, tmp_path):
    _, text, ck, _ = trained_run
    import shutil
    run = tmp_path / "ck"
    shutil.copytree(ck, run)
    result = run_cli("train.py", "--text", str(text), "--ckpt-dir", str(run), *TINY[:-4], "--epochs", "3", "--resume")
    assert result.returncode == 0, result.stderr
    assert "Resuming at epoch 3, batch 0 of" in result.stdout and "Epoch 3/3" in result.stdout
    assert "Epoch 1/3" not in result.stdout and "Epoch 2/3" not in result.stdout
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[2] == steps[1] + (steps[1] - steps[0]), "the optimizer step count continues"


def test_help_lists_every_flag_with_its_default():
    result = run_cli("train.py", "--help", env={"COLUMNS": "300"})
    assert result.returncode == 0
    for flag in ["--text", "--gutenberg", "--preset", "--layers", "--hidden", "--dropout", "--input-encoding",
                 "--epochs", "--batch-size", "--lr", "--seed", "--ckpt-dir", "--resume", "--seq-length",
                 "--no-lowercase", "--no-strip", "--objective", "--stateful", "--val-frac", "--windowing",
                 "--strip-punctuation", "--cell", "--input-dropout", "--clip-norm", "--lr-schedule",
                 "--warmup-steps", "--max-time", "--encoding", "--errors", "fast"]:
        assert flag in result.stdout
    assert "(default: 256, from --preset seed-small)" in result.stdout
    result = run_cli("sample.py", "--help")
    for flag in ["--ckpt", "--prime", "--length", "--temperature", "--top-k", "--seed", "--num-samples", "--context"]:
        assert flag in result.stdout


def test_orbax_teardown_noise_is_dropped_and_nothing_else():
    """A failed restore leaves tensorstore callbacks and orbax coroutines that raise as the process
    ends; the CLIs' unraisable hook drops exactly those (their timing is too random to test end to end)."""
    from types import SimpleNamespace

    from charlm.cli import _ignore_orbax_teardown

    async def read():
        pass

    read.__code__ = read.__code__.replace(co_filename=f"{os.sep}site-packages{os.sep}orbax{os.sep}x.py")
    orbax_coroutine = read()
    passed = []
    for exc, obj in [(RuntimeError("Event loop is closed"), None), (ValueError("bad read"), orbax_coroutine),
                     (RuntimeError("something else"), None), (ValueError("bad read"), object())]:
        _ignore_orbax_teardown(SimpleNamespace(exc_value=exc, object=obj), previous=passed.append)
    orbax_coroutine.close()
    assert [str(u.exc_value) for u in passed] == ["something else", "bad read"]


def test_a_prime_is_read_as_utf8_whatever_the_locale():
    from charlm.cli import argv_text

    undecoded = "東京 é".encode().decode("ascii", "surrogateescape")  # argv under LC_ALL=C, PYTHONUTF8=0
    assert argv_text(undecoded) == "東京 é" and argv_text("東京") == "東京"
    latin1_bytes = "é".encode("latin-1").decode("ascii", "surrogateescape")
    assert argv_text(latin1_bytes) == latin1_bytes  # not UTF-8 either: left as it is


def test_every_train_flag_reaches_the_config():
    from charlm.cli import run_config_from_args, train_parser
    args = train_parser().parse_args([
        "--layers", "3", "--hidden", "64", "--dropout", "0.1", "--input-encoding", "onehot", "--embed-dim", "8",
        "--cell", "gru", "--input-dropout", "0.05", "--seq-length", "50", "--stride", "7", "--objective", "all",
        "--stateful", "--val-frac", "0.2", "--no-lowercase", "--no-strip", "--strip-punctuation",
        "--epochs", "3", "--batch-size", "16", "--lr", "0.01", "--seed", "5", "--clip-norm", "2",
        "--lr-schedule", "exponential", "--warmup-steps", "9", "--lr-decay", "0.5", "--max-time", "1.5"])
    cfg = run_config_from_args(args)
    assert (cfg.model.layers, cfg.model.hidden, cfg.model.dropout, cfg.model.input_encoding, cfg.model.embed_dim,
            cfg.model.cell, cfg.model.input_dropout) == (3, 64, 0.1, "onehot", 8, "gru", 0.05)
    assert (cfg.data.seq_length, cfg.data.stride, cfg.data.objective, cfg.data.stateful, cfg.data.val_frac,
            cfg.data.lowercase, cfg.data.strip, cfg.data.strip_punctuation) == (50, 7, "all", True, 0.2, False, False, True)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate, cfg.train.seed, cfg.train.clip_norm,
            cfg.train.lr_schedule, cfg.train.warmup_steps, cfg.train.lr_decay, cfg.train.max_time) == \
        (3, 16, 0.01, 5, 2.0, "exponential", 9, 0.5, 1.5)
    assert run_config_from_args(train_parser().parse_args(["--preset", "seed-big", "--layers", "1"])).train.epochs == 50


BAD_TRAIN = {
    "missing text": (["--text", "nope.txt"], ["text file not found"]),
    "empty text": (["--text", "{empty}"], ["empty"]),
    "non-utf8 text": (["--text", "{latin1}"], ["not valid UTF-8", "offset 3"]),
    "short text": (["--text", "{short}"], ["too short for one window"]),
    "zero epochs": (["--epochs", "0"], ["epochs must be a positive integer"]),
    "negative batch": (["--batch-size", "-4"], ["batch_size must be a positive integer"]),
    "zero hidden": (["--hidden", "0"], ["hidden must be a positive integer"]),
    "zero layers": (["--layers", "0"], ["layers must be a positive integer"]),
    "dropout one": (["--dropout", "1"], ["dropout must be in [0, 1)"]),
    "not a number": (["--epochs", "many"], ["invalid int value"]),
    "stateful without dense": (["--stateful"], ["--objective all"]),
    "val frac one": (["--val-frac", "1"], ["val_frac must be in [0, 1)"]),
}


@pytest.mark.parametrize("case", BAD_TRAIN)
def test_bad_train_input_is_one_line_and_touches_no_checkpoint(case, trained_run, tmp_path):
    _, text, ck, _ = trained_run
    files = {"empty": tmp_path / "empty.txt", "latin1": tmp_path / "latin1.txt", "short": tmp_path / "short.txt"}
    files["empty"].write_bytes(b"")
    files["latin1"].write_bytes(b"abc\xff def")
    files["short"].write_text("too short", encoding="utf-8")
    args, words = BAD_TRAIN[case]
    args = [a.format(**files) for a in args]
    if "--text" not in args:
        args += ["--text", str(text)]
    before = tree_hash(ck)
    result = run_cli("train.py", *args, "--ckpt-dir", str(ck), "--resume", cwd=tmp_path)
    assert_one_line_error(result, *words)
    assert tree_hash(ck) == before


def test_resume_with_a_different_vocabulary_is_refused(trained_run, tmp_path):
    _, text, ck, _ = trained_run
    other = tmp_path / "other.txt"
    other.write_text(text.read_text(encoding="utf-8") + " {zebra} #1 ", encoding="utf-8")
    before = tree_hash(ck)
    result = run_cli("train.py", "--text", str(other), "--ckpt-dir", str(ck), *TINY[:-4], "--epochs", "5", "--resume")
    assert_one_line_error(result, "vocabulary differs", "#")
    assert tree_hash(ck) == before


def test_training_into_an_existing_checkpoint_without_resume_is_refused(trained_run):
    _, text, ck, _ = trained_run
    before = tree_hash(ck)
    result = run_cli("train.py", "--text", str(text), "--ckpt-dir", str(ck), *TINY)
    assert_one_line_error(result, "already holds a checkpoint", "--resume")
    assert tree_hash(ck) == before


BAD_SAMPLE = {
    "prime out of vocab": (["--prime", "alice€"], ["not in the model's vocabulary", "'€'"]),
    "missing ckpt": (["--ckpt", "{missing}"], ["checkpoint directory not found"]),
    "not a ckpt": (["--ckpt", "{empty_dir}"], ["holds no charlm checkpoint"]),
    "zero length": (["--length", "0"], ["length must be a positive integer"]),
    "negative temperature": (["--temperature", "-1"], ["temperature must be a number in [0, 100]"]),
    "beam with temperature": (["--beam", "2", "--temperature", "0.5"], ["beam search is deterministic"]),
    "unwritable output": (["--output", "{missing}/out.txt"], ["cannot write --output", "No such file"]),
}


@pytest.mark.parametrize("case", BAD_SAMPLE)
def test_bad_sample_input_is_one_line(case, trained_run, tmp_path):
    _, _, ck, _ = trained_run
    (tmp_path / "empty").mkdir()
    args, words = BAD_SAMPLE[case]
    args = [a.format(missing=tmp_path / "missing", empty_dir=tmp_path / "empty") for a in args]
    if "--ckpt" not in args:
        args += ["--ckpt", str(ck)]
    before = tree_hash(ck)
    result = run_cli("sample.py", *args)
    assert_one_line_error(result, *words)
    assert tree_hash(ck) == before


def test_gutenberg_book_is_downloaded_and_stripped(gutenberg_server, wonderland_path, tmp_path):
    url, put_book, _ = gutenberg_server
    put_book(11, "The Project Gutenberg eBook of Alice\n\n*** START OF THE PROJECT GUTENBERG EBOOK 11 ***\n"
             + wonderland_path.read_text(encoding="utf-8")[79:2500]
             + "\n*** END OF THE PROJECT GUTENBERG EBOOK 11 ***\nlicense text\n")
    env = {"CHARLM_GUTENBERG_URL": url, "CHARLM_CACHE_DIR": str(tmp_path / "cache")}
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("train.py", "--gutenberg", "11", *TINY[:-4], "--epochs", "1", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    assert "Total Characters: 2422" in result.stdout  # header and footer stripped
    assert (tmp_path / "cache" / "pg11.txt").is_file()
    assert (work / "checkpoints" / "best" / "1").is_dir()


def test_download_failure_says_to_pass_text(tmp_path):
    env = {"CHARLM_GUTENBERG_URL": "http://127.0.0.1:9", "CHARLM_CACHE_DIR": str(tmp_path / "cache")}
    result = run_cli("train.py", "--gutenberg", "11", "--epochs", "1", cwd=tmp_path, env=env)
    assert_one_line_error(result, "could not download Project Gutenberg book 11", "--text FILE")
    assert not (tmp_path / "checkpoints").exists()


def test_with_no_network_text_or_cache_train_py_trains_on_the_packaged_alice(tmp_path):
    # No --text, no ./wonderland.txt, an empty cache and a download host that refuses: the first
    # run of a fresh machine still prints the tutorial's summary and trains.
    env = {"CHARLM_GUTENBERG_URL": "http://127.0.0.1:9", "CHARLM_CACHE_DIR": str(tmp_path / "cache")}
    result = run_cli("train.py", "--hidden", "16", "--batch-size", "256", "--max-time", "0.005", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    for line in ("Total Characters: 144433", "Total Vocab: 45", "Total Patterns: 144333"):
        assert line in result.stdout
    assert "Time budget" in result.stdout and (tmp_path / "checkpoints" / "best").is_dir()


def run_module(*args, cwd=None, env=None):
    """Runs `python -m MODULE ARGS` (the evaluate CLI) as a user would, capturing output."""
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, encoding="utf-8",
                          env={**os.environ, **(env or {})}, timeout=300, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, wonderland_path):
    root = tmp_path_factory.mktemp("dense")
    text = root / "alice.txt"
    text.write_text(wonderland_path.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    result = run_cli("train.py", "--text", str(text), "--ckpt-dir", str(root / "ck"), *TINY,
                     "--objective", "all", "--stateful", "--val-frac", "0.1", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    return text, root / "ck", result


def test_dense_training_names_its_metrics(dense_run):
    _, _, result = dense_run
    assert "train loss (all-chars)" in result.stdout and "val loss (stream)" in result.stdout


def test_evaluate_json_and_table(dense_run):
    text, ck, _ = dense_run
    result = run_module("charlm.evaluate", "--ckpt", str(ck), "--text", str(text), "--val-frac", "0.1", "--json",
                        "--dynamic")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"nats_per_char", "bits_per_char", "perplexity", "chars"} <= set(report)
    assert report["chars"] == 493 and set(report["dynamic"]) == {"nats_per_char", "bits_per_char", "perplexity", "chars"}
    assert report["bits_per_char"] == pytest.approx(report["nats_per_char"] / math.log(2))
    table = run_module("charlm.evaluate", "--ckpt", str(ck), "--metric", "last-window", cwd="/")  # text from ckpt
    assert table.returncode == 0, table.stderr
    assert "last-window" in table.stdout and "nats/char" in table.stdout
    stream = run_module("charlm.evaluate", "--ckpt", str(ck), "--json", cwd="/")
    window = run_module("charlm.evaluate", "--ckpt", str(ck), "--json", "--metric", "last-window", cwd="/")
    s, w = json.loads(stream.stdout), json.loads(window.stdout)
    assert s["chars"] == 4920 and w["chars"] == 4911 and s["nats_per_char"] != w["nats_per_char"]


@pytest.mark.parametrize("args, words", [
    (["--val-frac", "1.5"], ["--val-frac must be in [0, 1)"]),
    (["--metric", "last-window", "--dynamic"], ["--dynamic works with the stream metric only"]),
    (["--text", "{unknown}"], ["the model never saw", "'€'"]),
])
def test_evaluate_bad_input(dense_run, tmp_path, args, words):
    _, ck, _ = dense_run
    unknown = tmp_path / "u.txt"
    unknown.write_text("price: 5 €", encoding="utf-8")
    result = run_module("charlm.evaluate", "--ckpt", str(ck), *[a.format(unknown=unknown) for a in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for w in words:
        assert w in result.stderr


def test_sample_stop_output_novelty_and_beam(trained_run, tmp_path):
    root, text, ck, _ = trained_run
    out = tmp_path / "samples.txt"
    result = run_cli("sample.py", "--ckpt", str(ck), "--prime", "alice", "--length", "300", "--seed", "3",
                     "--temperature", "0.8", "--top-p", "0.9", "--num-samples", "2", "--stop", "\n", "--output",
                     str(out), "--novelty")
    assert result.returncode == 0, result.stderr
    samples = out.read_text(encoding="utf-8").split("\n\n")
    assert len(samples) == 2 and samples[1].endswith("\n") and all("\n" not in s for s in samples[0:1])
    assert result.stdout.startswith("Wrote 2 sample(s) to ")
    assert re.search(r"Verbatim in the training text .*: 10-char [\d.]+%, 20-char ([\d.]+%|n/a), 40-char", result.stdout)
    beams = run_cli("sample.py", "--ckpt", str(ck), "--prime", "alice", "--length", "40", "--beam", "3",
                    "--num-samples", "2", "--no-repeat-ngram", "6")
    assert beams.returncode == 0, beams.stderr
    assert re.findall(r"--- beam (\d)/3, (-[\d.]+) nats/char ---", beams.stdout)[0][0] == "1"


def test_interactive_session_through_stdin(trained_run):
    _, _, ck, _ = trained_run
    session = "alice\n:t 0.9\n:k 5\nalice€ was\n:x\nthe \n"
    result = subprocess.run([sys.executable, str(REPO / "sample.py"), "--ckpt", str(ck), "--interactive",
                             "--length", "30", "--seed", "0"], input=session, capture_output=True, text=True,
                            encoding="utf-8", timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("> ") == 7, out  # six lines, then the prompt that meets the end of input
    assert "temperature 0.9, top-k off" in out and "temperature 0.9, top-k 5" in out
    assert "error: prime text contains 1 char(s) not in the model's vocabulary: '€'" in out
    assert "error: unknown command ':x'" in out
    continuations = re.findall(r"> (alice|the )(.*)\n", out)
    assert [len(c) for _, c in continuations] == [30, 30], out


def test_ctrl_c_while_streaming_prints_what_was_made_and_exits_130(trained_run):
    import signal
    import time

    _, _, ck, _ = trained_run
    proc = subprocess.Popen([sys.executable, "-u", str(REPO / "sample.py"), "--ckpt", str(ck), "--length", "5000000",
                             "--temperature", "1", "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = proc.stdout.readline()  # the Seed line, then text streams
        assert first.startswith(b'Seed: "')
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # on a failure, a 5M-char stream must not take a core for the rest of the suite
    assert proc.returncode == 130, err
    assert out.endswith(b"\n[interrupted]\n") and 100 < len(out) < 5_000_000, len(out)


def test_a_ctrl_c_that_lands_in_a_garbage_collection_callback_still_stops_the_stream():
    """JAX runs a gc callback while sampling; a KeyboardInterrupt raised there is swallowed by
    Python, so the stream must take Ctrl-C as a flag it checks, not as an exception."""
    import gc
    import io
    import signal

    from charlm.interactive import write_stream

    def ctrl_c_during_gc():
        def callback(phase, info):
            if phase == "start":
                os.kill(os.getpid(), signal.SIGINT)
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)

    def pieces():
        for i in range(100):
            if i == 3:
                ctrl_c_during_gc()
            yield str(i % 10)

    out, before = io.StringIO(), signal.getsignal(signal.SIGINT)  # SIG_IGN in a pytest-xdist worker
    text, interrupted = write_stream(pieces(), out)
    assert interrupted and text == out.getvalue() == "0123"
    assert signal.getsignal(signal.SIGINT) is before  # put back


def test_dynamic_rms_statistics_come_from_the_training_part_of_the_checkpoints_text(dense_run, tmp_path):
    """Scoring the whole training text takes the RMS statistics from its recorded training part;
    a foreign text with no tail to score gets a message, not "too short"."""
    from charlm.config import DynamicSettings
    from charlm.errors import CharlmError
    from charlm.scoring import evaluate_checkpoint

    text, ck, _ = dense_run
    settings = DynamicSettings(segment=20, adapt_chars=0, stat_segments=8)
    report = evaluate_checkpoint(str(ck), dynamic=settings)  # no --val-frac: the whole text
    assert report["dynamic"]["chars"] == report["chars"] > 4000
    other = tmp_path / "other.txt"
    from charlm.corpus import clean_text
    other.write_text(clean_text(text.read_text(encoding="utf-8"))[::-1], encoding="utf-8")  # same chars, not its text
    with pytest.raises(CharlmError, match="takes its statistics from training text"):
        evaluate_checkpoint(str(ck), str(other), dynamic=settings)
