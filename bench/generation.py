"""Generation benchmarks (issue 12): sampler speed per mode against the previous sampler, streaming
latency, what the anti-loop controls do to argmax's loops, and charlm-serve's latency.

    python train.py --preset fast --max-time 8 --ckpt-dir /tmp/gen/fast   # a trained model for the loops
    python -m bench.generation --ckpt /tmp/gen/fast --baseline eed39ec     # ~5 minutes; one job at a time

Speed uses the tutorial's seed-small net (1x256 LSTM, scaled input) at random init, as bench/run.py's
sampling rows do (the weights do not change the cost); `--baseline REV` loads charlm/sampling.py as
it was at REV from git and times it in the same process, interleaved round by round with the
current one. Writes bench/results/generation.json and prints a short table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import numpy as np

from bench import perfkit
from charlm.beam import beam_search
from charlm.checkpoint import restore
from charlm.config import SamplingSettings, make_run_config
from charlm.logits import Plan, values_of
from charlm.model import init_params
from charlm.sampling import advance, generate, start, stream

REPO = Path(__file__).resolve().parents[1]
SPEED_MODES = {
    "plain T=1": SamplingSettings(1.0),
    "top-k 10": SamplingSettings(1.0, top_k=10),
    "top-p 0.9": SamplingSettings(1.0, top_p=0.9),
    "penalty 1.3": SamplingSettings(1.0, repetition_penalty=1.3),
    "no-repeat 6": SamplingSettings(1.0, no_repeat_ngram=6),
    "top-p+penalty+no-repeat": SamplingSettings(1.0, top_p=0.9, repetition_penalty=1.3, no_repeat_ngram=6),
}
LOOP_MODES = {
    "argmax": {},
    "penalty 1.2": {"repetition_penalty": 1.2},
    "penalty 1.5": {"repetition_penalty": 1.5},
    "no-repeat 8": {"no_repeat_ngram": 8},
    "no-repeat 16": {"no_repeat_ngram": 16},
    "beam 4": {"beam": 4},
    "beam 4 + no-repeat 16": {"beam": 4, "no_repeat_ngram": 16},
}


def old_sampler(rev: str):
    """charlm/sampling.py as it was at `rev`, imported under another name."""
    source = subprocess.run(["git", "show", f"{rev}:charlm/sampling.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"sampling_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"sampling_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def speed(args, tokens, vocab_size) -> dict:
    cfg = make_run_config("seed-small", vocab_size=vocab_size)
    params = init_params(cfg.model, jax.random.key(0))
    prime = jnp.asarray(perfkit.primes(tokens, 64))
    mask = jnp.ones(prime.shape, bool)
    L, key = args.chars, jax.random.key(2)
    calls = {}
    if args.baseline:
        old = old_sampler(args.baseline)
        for rows in (1, 64):
            calls[f"baseline plain T=1 x{rows}"] = (rows, lambda rows=rows: old.generate_stateful(
                params, cfg.model, prime[:rows], key, length=L, temperature=1.0))
            calls[f"baseline top-k 10 x{rows}"] = (rows, lambda rows=rows: old.generate_stateful(
                params, cfg.model, prime[:rows], key, length=L, temperature=1.0, top_k=10))

    def new(settings, rows, model=cfg.model):
        plan, values = Plan.of(settings), values_of(settings)
        capacity = 100 + L if plan.ngram else 1

        def call():
            d = start(params, model, prime[:rows], mask[:rows], values, plan=plan, window=None, capacity=capacity)
            return advance(params, model, d, values, key, plan=plan, window=None, steps=L)[1]
        return call

    for name, settings in SPEED_MODES.items():
        for rows in ((1, 64) if name in ("plain T=1", "top-k 10") else (1,)):
            calls[f"{name} x{rows}"] = (rows, new(settings, rows))
    # The same net with bf16 matmuls (a net trained with --precision bfloat16, or sample.py's
    # --precision bfloat16); the "plain" rows are f32.
    bf16 = dataclasses.replace(cfg.model, precision="bfloat16")
    for rows in (1, 64):
        calls[f"bf16 matmuls, plain T=1 x{rows}"] = (rows, new(SamplingSettings(1.0), rows, bf16))
    for k in (4,):
        calls[f"beam {k} x1"] = (1, lambda k=k: beam_search(
            params, cfg.model, prime[:1], mask[:1], values_of(SamplingSettings()), plan=Plan.of(SamplingSettings()),
            window=None, beams=k, length=L, capacity=1)[0])
    # The prime's run alone, to split each call's time into the prime and the generated chars: the
    # current sampler pads the prime to a power of two (one compile for primes of similar length).
    from charlm.model import CharLSTM
    from charlm.sampling import padded_prime
    prime_only = jax.jit(lambda p, x: CharLSTM(cfg.model).apply({"params": p}, x, last_only=True))
    plain = SamplingSettings(1.0)
    padded, padded_mask = padded_prime(np.asarray(prime[0]), 1)
    calls["prime only, baseline x1"] = (1, lambda: prime_only(params, prime[:1]))
    calls["prime only, current x1"] = (1, lambda: start(params, cfg.model, padded, padded_mask, values_of(plain),
                                                        plan=Plan.of(plain), window=None, capacity=1))
    times = {name: [] for name in calls}
    for _, fn in calls.values():
        jax.block_until_ready(fn())  # compile
    for _ in range(args.rounds):
        for name, (_, fn) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    out = {}
    prime_s = {"baseline": statistics.median(times["prime only, baseline x1"]),
               "current": statistics.median(times["prime only, current x1"])}
    for name, (rows, _) in calls.items():
        s = statistics.median(times[name])
        out[name] = {"streams": rows, "chars": L, "median_s": s, "us_per_char_per_stream": 1e6 * s / L,
                     "chars_per_s": rows * L / s, "spread_s": [min(times[name]), max(times[name])]}
        if rows == 1 and not name.startswith("prime"):
            prime_cost = prime_s["baseline" if name.startswith("baseline") else "current"]
            out[name]["us_per_generated_char"] = 1e6 * (s - prime_cost) / L
    return out


def streaming(args, params, cfg, vocab, prime) -> dict:
    """Time to first char and total for a long sample, streamed (chunks of 32) vs one call."""
    n = args.stream_chars
    settings = SamplingSettings(0.8)
    for chunk in (32, 128, None):  # compile each
        for _ in stream(params, cfg, vocab, prime, settings, length=n if chunk is None else 300, chunk=chunk):
            pass
    result = {}
    for label, chunk in (("streamed (chunks of 32)", 32), ("streamed (chunks of 128, the CLI's)", 128),
                         ("one call", None)):
        firsts, totals = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            first = None
            for pieces in stream(params, cfg, vocab, prime, settings, length=n, seed=1, chunk=chunk):
                if first is None and pieces[0]:
                    first = time.perf_counter() - t0
            totals.append(time.perf_counter() - t0)
            firsts.append(first)
        result[label] = {"chars": n, "first_char_s": statistics.median(firsts), "total_s": statistics.median(totals)}
    return result


def first_repeat(text: str, n: int = 40) -> int | None:
    """Chars generated until the first n-char substring that already occurred (its end), or None."""
    seen = set()
    for i in range(len(text) - n + 1):
        if text[i:i + n] in seen:
            return i + n
        seen.add(text[i:i + n])
    return None


def loops(args, params, cfg, vocab, meta) -> dict:
    from charlm.beam import beam_generate

    primes = meta["seeds"][:args.primes]
    result = {}
    for name, mode in LOOP_MODES.items():
        mode = dict(mode)
        beams = mode.pop("beam", None)
        settings = SamplingSettings(**mode)
        texts = [beam_generate(params, cfg, vocab, p, settings, beams=beams, length=args.loop_chars)[0][0] if beams
                 else generate(params, cfg, vocab, p, settings, length=args.loop_chars)[0] for p in primes]
        repeats = [first_repeat(t) for t in texts]
        result[name] = {"first_repeat_40": repeats, "cap": args.loop_chars, "example": texts[0][:300]}
    return result


def serve_latency(args, ckpt) -> dict:
    """Generate-to-first-char in a headless browser after warm-up, and 8 concurrent generations."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from charlm.serve import App, make_server

    app = App(ckpt)
    app.warm_up()
    httpd = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    out = {}

    def post(body):
        t0 = time.perf_counter()
        req = urllib.request.Request(url + "/api/generate", data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=300) as r:
            lines = [json.loads(x) for x in r.read().decode().splitlines()]
        return "".join(m.get("text", "") for m in lines), time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, [{"prime": "alice", "length": 500, "seed": i} for i in range(8)]))
    out["concurrent_8x500"] = {"completed": sum(len(t) == 500 for t, _ in results), "wall_s": time.perf_counter() - t0,
                               "each_s": [round(s, 3) for _, s in results]}
    _, alone = post({"prime": "alice", "length": 500, "seed": 99})
    out["alone_1x500_s"] = alone
    try:
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        out["browser"] = "selenium not installed"
        return out
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))
    try:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 120, poll_frequency=0.02)
        wait.until(lambda b: "val bits/char" in b.find_element(By.ID, "card").text)
        firsts = []
        for _ in range(6):
            browser.find_element(By.ID, "generate").click()
            wait.until(lambda b: " chars in " in b.find_element(By.ID, "status").text)
            firsts.append(float(browser.find_element(By.ID, "output").get_attribute("data-first-char-ms")))
        out["browser_first_char_ms"] = {"runs": firsts, "median": statistics.median(firsts[1:])}
    finally:
        browser.quit()
        httpd.shutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a trained checkpoint for the loop, streaming and serve rows")
    p.add_argument("--baseline", help="git revision whose charlm/sampling.py to time side by side")
    p.add_argument("--text", default=perfkit.DEFAULT_TEXT)
    p.add_argument("--chars", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--stream-chars", type=int, default=20000)
    p.add_argument("--loop-chars", type=int, default=2000)
    p.add_argument("--primes", type=int, default=5)
    p.add_argument("--only", nargs="*", default=["speed", "streaming", "loops", "serve"])
    p.add_argument("--out", default=str(REPO / "bench/results/generation.json"))
    args = p.parse_args()
    tokens, vocab_size = perfkit.load_tokens(args.text)
    state, cfg, vocab, meta = restore(args.ckpt)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {}  # --only re-measures some sections
    record |= {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cpus", "jax": jax.__version__,
              "python": platform.python_version(), "ckpt_config": cfg.model.__dict__ | {"seq_length": cfg.data.seq_length},
              "command": " ".join(sys.argv), "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                                                       capture_output=True, text=True).stdout.strip()}
    if "speed" in args.only:
        record["speed"] = speed(args, tokens, vocab_size)
        for name, r in record["speed"].items():
            extra = f"  {r['us_per_generated_char']:6.2f} us/char after the prime" if "us_per_generated_char" in r else ""
            print(f"{name:32s} {r['us_per_char_per_stream']:8.2f} us/char/stream  {r['chars_per_s']:10,.0f} chars/s{extra}")
    if "streaming" in args.only:
        record["streaming"] = streaming(args, state.params, cfg, vocab, meta["seeds"][0])
        print(json.dumps(record["streaming"]))
    if "loops" in args.only:
        record["loops"] = loops(args, state.params, cfg, vocab, meta)
        for name, r in record["loops"].items():
            print(f"{name:24s} first repeated 40-char substring after {r['first_repeat_40']} (cap {r['cap']})")
    if "serve" in args.only:
        record["serve"] = serve_latency(args, args.ckpt)
        print(json.dumps(record["serve"]))
    out.write_text(json.dumps(record, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
