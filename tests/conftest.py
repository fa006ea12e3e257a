"""Shared fixtures: the tutorial's Alice text from ../shared, small texts, and CLI runners."""

import http.server
import os
import subprocess
import threading
from functools import partial
import sys
from pathlib import Path

# glibc's allocator left as it is, here and in every process the tests start. Training tunes it
# (charlm.host: train.py, and charlm.train in-process, for the whole process), which makes long
# train steps faster but every compile slower (one arena for all of XLA's threads), and these
# tests are mostly compiles: with the tuning applied to every process, tests/test_recurrence.py
# with tests/test_model.py took 96 and 104 s, against 76 and 82 s untouched. tests/test_host.py
# checks the tuning in fresh interpreters.
os.environ.setdefault("CHARLM_ALLOCATOR", "system")
# XLA's fast compile mode, here and in every process the tests start: these tests are mostly
# compiles of tiny nets, and tests/test_model.py with tests/test_regularisers.py took 69 s with
# it against 99 s without. What they check (equalities between two ways of computing the same
# thing, resumes bit for bit) holds in either mode.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")  # a silently broadcast axis is a bug

REPO = Path(__file__).resolve().parents[1]
WONDERLAND = REPO.parent / "shared" / "data" / "wonderland.txt"


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_for_subprocesses(tmp_path_factory):
    """The end-to-end tests start dozens of train.py / sample.py processes that compile the same
    small programs: a persistent XLA cache shared by them halves each run (a tiny 2-epoch
    train.py: 6.5 s cold, 3.2 s cached). This process read its JAX_* variables when it imported
    jax, so in-process tests (the time-budget ones among them) still compile cold."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("xla-cache")))
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        # The token cache and downloads go to a temporary directory, not the user's cache.
        mp.setenv("CHARLM_CACHE_DIR", str(tmp_path_factory.mktemp("charlm-cache")))
        yield


def without_compilation_cache() -> dict:
    """The environment for a process that will be killed: a kill must not land in a cache write."""
    return {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}


@pytest.fixture(scope="session")
def wonderland_path() -> Path:
    if not WONDERLAND.is_file():
        pytest.skip(f"{WONDERLAND} is missing")
    return WONDERLAND


@pytest.fixture
def small_text_file(tmp_path, wonderland_path) -> Path:
    """The first ~3,000 chars of Alice after the START line, as a file."""
    path = tmp_path / "alice-small.txt"
    path.write_text(wonderland_path.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    return path


def run_cli(script: str, *args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs train.py / sample.py from the repo as a user would, capturing output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout)


# A tiny, fast training config for end-to-end tests.
TINY = ["--hidden", "16", "--seq-length", "10", "--batch-size", "32", "--epochs", "2", "--seed", "0"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, wonderland_path):
    """A tiny model trained by train.py on a 3,000-char slice of Alice: (root, text, checkpoint dir,
    train.py's CompletedProcess). One per session, for every test that needs just some trained model."""
    root = tmp_path_factory.mktemp("e2e")
    text = root / "alice.txt"
    text.write_text(wonderland_path.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    result = run_cli("train.py", "--text", str(text), "--ckpt-dir", str(root / "ck"), *TINY)
    assert result.returncode == 0, result.stderr
    return root, text, root / "ck", result


@pytest.fixture
def gutenberg_server(tmp_path):
    """A local HTTP server with gutenberg.org's cache layout: (url, put_book(id, text), request paths)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    def put_book(book_id: int, text: str) -> None:
        folder = root / "cache" / "epub" / str(book_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"pg{book_id}.txt").write_text(text, encoding="utf-8")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", put_book, requests
    server.shutdown()
    server.server_close()
