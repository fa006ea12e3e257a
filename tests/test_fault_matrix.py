"""The fault matrix: hostile and odd inputs through the real CLIs, run as subprocesses.

Every failure must be one line on stderr and exit code 2, with no traceback, no training step,
and any checkpoint it was pointed at left byte for byte as it was. Odd but valid inputs (a
vocabulary of one char, thousands of CJK chars and emoji, a 2 MB line) must work end to end.
Everything runs under an ASCII locale, where the output must still be UTF-8. The texts are
generated here, never taken from a book.
"""

import json
import math
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_cli
from test_cli import assert_one_line_error, run_module, tree_hash

# A locale that can encode nothing but ASCII (PYTHONUTF8=0 stops Python from switching itself
# to UTF-8 under the C locale).
ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "ascii", "PYTHONUTF8": "0"}
FAST = [*TINY, "--epochs", "1"]


def unicode_text() -> str:
    """Accents, emoji and 3,000 distinct CJK chars, about 6,500 chars in all."""
    rng = random.Random(0)
    cjk = [chr(0x4E00 + i) for i in range(3000)]
    rng.shuffle(cjk)
    words = ["café", "naïve", "straße", "ærøskøbing", "東京", "😀", "🎉", "über", "ça"]
    return "".join(c + (f" {rng.choice(words)}\n" if i % 7 == 0 else "") for i, c in enumerate(cjk))


def run(argv: list[str], env: dict | None = None):
    """Runs train.py, sample.py or (named "evaluate") the evaluate module, decoding its output as
    UTF-8 strictly, so output in any other encoding fails the test."""
    if argv[0] == "evaluate":
        return run_module("charlm.evaluate", *argv[1:], env=env)
    return run_cli(argv[0], *argv[1:], env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model trained by train.py on the Unicode text, under the ASCII locale."""
    root = tmp_path_factory.mktemp("unicode")
    text = root / "unicode.txt"
    text.write_text(unicode_text(), encoding="utf-8")
    result = run_cli("train.py", "--text", str(text), "--ckpt-dir", str(root / "ck"), *FAST, env=ASCII_LOCALE)
    assert result.returncode == 0, result.stderr
    return text, root / "ck", result


def test_unicode_text_trains_samples_and_evaluates_under_an_ascii_locale(trained):
    _, ck, result = trained
    assert int(re.search(r"Total Vocab: (\d+)", result.stdout)[1]) > 3000
    prime = "東京 café 😀"
    sample = run_cli("sample.py", "--ckpt", str(ck), "--prime", prime, "--length", "30", "--seed", "0",
                     env=ASCII_LOCALE)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith(f'Seed: "{prime}"\n') and sample.stdout.endswith("\n\nDone.\n")
    report = run_module("charlm.evaluate", "--ckpt", str(ck), "--json", env=ASCII_LOCALE)  # the text from the ckpt
    assert report.returncode == 0, report.stderr
    report = json.loads(report.stdout)
    assert report["chars"] == len(unicode_text()) - 1 and math.isfinite(report["nats_per_char"])


def test_a_2mb_line_of_one_char_trains_samples_and_evaluates(tmp_path):
    """Two odd texts in one run (each run costs seconds): a vocabulary of one char, which the
    model learns with certainty (loss 0, perplexity 1), as a 2 MB line without a newline. The
    file is latin-1, so --encoding is exercised on train.py and the evaluate module too."""
    text, ck = tmp_path / "e.txt", tmp_path / "ck"
    text.write_bytes("é".encode("latin-1") * 2_000_000)
    result = run_cli("train.py", "--text", str(text), "--encoding", "latin-1", "--ckpt-dir", str(ck), *FAST,
                     "--objective", "all", "--max-time", "0.02")
    assert result.returncode == 0, result.stderr
    assert "Total Characters: 2000000\nTotal Vocab: 1\n" in result.stdout
    assert "loss improved from inf to 0.00000" in result.stdout
    sample = run_cli("sample.py", "--ckpt", str(ck), "--length", "20", "--temperature", "1", "--top-k", "3")
    assert sample.stdout == f'Seed: "{"é" * 10}"\n{"é" * 20}\n\nDone.\n', sample.stderr
    report = run_module("charlm.evaluate", "--ckpt", str(ck), "--json", "--encoding", "latin-1", "--val-frac", "5e-4")
    assert report.returncode == 0, report.stderr
    report = json.loads(report.stdout)
    assert report["chars"] == 1000 and report["perplexity"] == pytest.approx(1.0)


# --- the matrix: (argv, setup(ck, tmp), words the one-line error must contain) ---------------
# {ck} is a fresh copy of the trained checkpoint, {text} its training text, {tmp} a scratch dir.


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def marker(tmp: Path) -> Path:
    return tmp / "UNPICKLED"


def step_dirs(ck: Path) -> list[Path]:
    """Every checkpoint in the run dir (best/<epoch>/ and last/<n>/), so that each CLI meets the damage
    whichever one it reads."""
    return sorted(p for p in ck.glob("*/*") if p.is_dir() and p.name.isdigit())


def for_each_step(change):
    def setup(ck, tmp):
        for step in step_dirs(ck):
            change(step, tmp)
    return setup


def remove(part: str):
    return for_each_step(lambda step, tmp: shutil.rmtree(step / part))


def write_meta(data: bytes):
    return for_each_step(lambda step, tmp: (step / "meta" / "metadata").write_bytes(data))


def edit_meta(change):
    def edit(step, tmp):
        path = step / "meta" / "metadata"
        meta = json.loads(path.read_text(encoding="utf-8"))
        change(meta)
        path.write_text(json.dumps(meta), encoding="utf-8")
    return for_each_step(edit)


def edit_config(section: str, **values):
    return edit_meta(lambda meta: meta["config"][section].update(values))


def array_files(ck: Path) -> list[Path]:
    return [p for p in ck.rglob("*") if p.is_file() and p.parent.name == "d"]  # orbax's */state/**/d/*


def truncate_arrays(ck, tmp):
    for p in array_files(ck):
        p.write_bytes(p.read_bytes()[:10])


def delete_arrays(ck, tmp):
    for p in array_files(ck):
        p.unlink()


def replace_with_file(part: str):
    def setup(ck, tmp):
        shutil.rmtree(ck / part)
        (ck / part).write_bytes(b"")
    return setup


def pickle_meta(ck, tmp):
    write_meta(pickle.dumps(Payload(marker(tmp))))(ck, tmp)


def pickle_everything_but_meta(ck, tmp):
    for p in ck.rglob("*"):
        if p.is_file() and p.parent.name != "meta":
            p.write_bytes(pickle.dumps(Payload(marker(tmp))))


def text_file(data: bytes):
    def setup(ck, tmp):
        (tmp / "in.txt").write_bytes(data)
    return setup


def a_file_at(name: str):
    return lambda ck, tmp: (tmp / name).write_bytes(b"")


SAMPLE = ["sample.py", "--ckpt", "{ck}", "--length", "5"]
EVALUATE = ["evaluate", "--ckpt", "{ck}", "--text", "{text}"]
RESUME = ["train.py", "--text", "{text}", "--ckpt-dir", "{ck}", "--resume", *TINY]  # 2 epochs: 1 more
TRAIN_ON = ["train.py", "--text", "{tmp}/in.txt", "--ckpt-dir", "{ck}", "--resume", *TINY]
EVALUATE_ON = ["evaluate", "--ckpt", "{ck}", "--text", "{tmp}/in.txt"]
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
NOT_UTF8 = ("not valid UTF-8 (byte 0xe9 at offset 7)", "--encoding", "--errors replace")


def cases():
    c = pytest.param
    damaged_arrays = ("cannot restore checkpoint", "damaged, missing or do not match")
    return [
        # text files
        c(TRAIN_ON, text_file(b"abc caf\xe9 au lait"), NOT_UTF8, id="train: not UTF-8"),
        c(EVALUATE_ON, text_file(b"abc caf\xe9 au lait"), NOT_UTF8, id="evaluate: not UTF-8"),
        c(TRAIN_ON, text_file(BINARY), ("looks like a binary file", "NUL"), id="train: binary file"),
        c(TRAIN_ON, text_file(bytes(range(1, 32)) * 40), ("looks like a binary file", "control chars"),
          id="train: control chars"),
        c(TRAIN_ON, text_file("utf-16 text".encode("utf-16")), ("looks like a binary file", "--encoding", "utf-16"),
          id="train: UTF-16 without --encoding"),
        c(TRAIN_ON, text_file(b""), ("text file is empty",), id="train: 0-byte file"),
        c([*TRAIN_ON, "--encoding", "klingon"], text_file(b"qapla'"), ("unknown text encoding 'klingon'",),
          id="train: unknown encoding"),
        c([*EVALUATE_ON, "--errors", "bogus"], text_file(b"x"), ("--errors", "invalid choice: 'bogus'"),
          id="evaluate: unknown --errors"),
        c(["sample.py", "--ckpt", "{ck}", "--prime", "東京 €"], None, ("not in the model's vocabulary", "'€'"),
          id="sample: prime outside the vocabulary, quoted under an ASCII locale"),
        # partial checkpoints
        c(SAMPLE, remove("state"), ("is incomplete", "state/"), id="sample: state dir missing"),
        c(RESUME, remove("meta"), ("is incomplete", "meta/"), id="resume: meta dir missing"),
        c(SAMPLE, truncate_arrays, damaged_arrays, id="sample: array files truncated"),
        c(RESUME, truncate_arrays, damaged_arrays, id="resume: array files truncated"),
        c(EVALUATE, delete_arrays, damaged_arrays, id="evaluate: array files deleted"),
        # an empty file where a directory should be
        c(["sample.py", "--ckpt", "{tmp}/ckpt"], a_file_at("ckpt"), ("is a file, not a checkpoint directory",),
          id="sample: --ckpt is a file"),
        c(SAMPLE, replace_with_file("best"), ("best is a file, not a directory",), id="sample: best/ is a file"),
        # hand-edited metadata
        c(SAMPLE, write_meta(b'{"format": "charlm-'), ("not JSON",), id="sample: malformed JSON"),
        c(EVALUATE, write_meta(b"[1, 2"), ("not JSON",), id="evaluate: malformed JSON"),
        c(SAMPLE, edit_meta(lambda m: m.update(version=2)), ("format version 2", "newer charlm"),
          id="sample: future format version"),
        c(RESUME, edit_meta(lambda m: m.update(version=2)), ("format version 2", "newer charlm"),
          id="resume: future format version"),
        c(SAMPLE, edit_meta(lambda m: m.update(epoch="1")), ("malformed 'epoch'",), id="sample: epoch a string"),
        c(SAMPLE, edit_meta(lambda m: m.update(seeds=[])), ("malformed 'seeds'",), id="sample: no seed windows"),
        c(EVALUATE, edit_meta(lambda m: m.update(corpus=["x"])), ("malformed 'corpus'",), id="evaluate: corpus a list"),
        c(SAMPLE, edit_config("model", hidden="16"), ("hidden must be a positive integer, got '16'",),
          id="sample: hidden a string"),
        c(RESUME, edit_config("model", hidden=-16), ("hidden must be a positive integer, got -16",),
          id="resume: negative hidden"),
        c(SAMPLE, edit_config("model", colour="blue"), ("unknown ModelConfig field(s): colour",),
          id="sample: unknown config key"),
        c(SAMPLE, edit_meta(lambda m: m.update(vocab=m["vocab"][:-1])), ("vocabulary has", "the model expects"),
          id="sample: vocab shorter than vocab_size"),
        c(SAMPLE, edit_meta(lambda m: m.update(vocab="a" * len(m["vocab"]))), ("vocabulary repeats chars",),
          id="sample: repeated vocab chars"),
        c(SAMPLE, edit_config("model", hidden=17), damaged_arrays, id="sample: config edited to other shapes"),
        # pickles wherever a loader might look
        c(SAMPLE, pickle_meta, ("not JSON",), id="sample: metadata is a pickle"),
        c(SAMPLE, pickle_everything_but_meta, damaged_arrays, id="sample: every other file is a pickle"),
        # an unwritable checkpoint directory (we may run as root, so no chmod)
        c(["train.py", "--text", "{text}", "--ckpt-dir", "{tmp}/file/ck", *FAST], a_file_at("file"),
          ("not writable", "Not a directory"), id="train: --ckpt-dir under a file"),
    ]


@pytest.mark.parametrize("argv, setup, words", cases())
def test_fault(trained, tmp_path, argv, setup, words):
    text, trained_ck, _ = trained
    ck = tmp_path / "ck"
    shutil.copytree(trained_ck, ck)
    if setup:
        setup(ck, tmp_path)
    before = tree_hash(ck)
    result = run([a.format(ck=ck, text=text, tmp=tmp_path) for a in argv], env=ASCII_LOCALE)
    assert_one_line_error(result, *words)
    assert not re.search(r"^Epoch \d", result.stdout, re.MULTILINE), "no training step may run"
    assert tree_hash(ck) == before, "the checkpoint must not change"
    assert not marker(tmp_path).exists(), "a pickle in the checkpoint was loaded"


def test_the_pickle_payload_is_live(tmp_path):
    """The payload really runs code when unpickled, so the matrix's no-marker checks mean something."""
    pickle.loads(pickle.dumps(Payload(marker(tmp_path))))
    assert marker(tmp_path).exists()


UNSAFE_LOADERS = [
    (r"^\s*(import|from)\s+(pickle|cPickle|_pickle|dill|cloudpickle|joblib|shelve|marshal)\b", "a pickle module"),
    (r"allow_pickle\s*=\s*True", "allow_pickle=True"),
    (r"\b(np|numpy)\.load\((?![^)]*allow_pickle\s*=\s*False)", "np.load without allow_pickle=False"),
    (r"\btorch\.load\(", "torch.load"),
]


def test_no_module_can_unpickle():
    found = [f"{path.relative_to(REPO)}:{n}: {what}"
             for path in sorted((REPO / "charlm").rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             for pattern, what in UNSAFE_LOADERS if re.search(pattern, line)]
    assert not found, found
