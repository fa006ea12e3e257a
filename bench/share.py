"""Sharing a model with a class: the exported page in headless Chromium, and the server.

    python -m bench.share --ckpt best=/tmp/charlm-finetune-base/best-15 --ckpt fast=runs/fast

Per checkpoint: the exported file's size and precision, its chars/s at T 0.8 (2,000 chars,
median of 3) and whether its argmax text is Python's for 1,000 chars (with the near-ties). For
the first: the server with 1 and then 30 clients x 1,000 chars (errors, time to the first
chars, chars/s) and the peak RSS after 10 and 1,000 short requests. Writes bench/results/share.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.perfkit import peak_rss_mb
from charlm.checkpoint import restore
from charlm.export import export, near_ties
from charlm.sampling import generate
from tests.test_serve import _browser, running


def page_figures(path: Path, python_text: str, prime: str) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        browser.get(path.as_uri())
        field, wait = (lambda n: browser.find_element(By.ID, n)), WebDriverWait(browser, 300)
        rates = []
        for temperature, length, seed in (("0", "1000", "0"), ("0.8", "2000", "1"), ("0.8", "2000", "2"), ("0.8", "2000", "3")):
            browser.execute_script("document.getElementById('prime').value = arguments[0]", prime)
            for name, value in (("temperature", temperature), ("length", length), ("seed", seed)):
                field(name).clear()
                field(name).send_keys(value)
            field("generate").click()
            wait.until(lambda b: f"{length} chars in" in field("status").text)
            if temperature == "0":
                same = field("generated").get_attribute("textContent") == python_text
            else:
                rates.append(int(field("status").get_attribute("data-chars-per-second")))
        return {"argmax_equals_python_1000": same, "chars_per_s": statistics.median(rates), "all_chars_per_s": rates}
    finally:
        browser.quit()


def generate_over_http(url: str, length: int, seed: int) -> dict:
    body = json.dumps({"prime": "alice was", "length": length, "temperature": 0.8, "seed": seed}).encode()
    t0, first, chars = time.monotonic(), None, 0
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/api/generate", data=body), timeout=600) as r:
            for line in r:
                piece = json.loads(line).get("text", "")
                if piece and first is None:
                    first = time.monotonic() - t0
                chars += len(piece)
    except OSError as e:
        return {"error": str(e)}
    return {"first_s": first, "seconds": time.monotonic() - t0, "chars": chars}


def server_figures(ckpt: str) -> dict:
    from charlm.serve import App

    app = App(ckpt)
    app.warm_up()
    out = {}
    with running(app) as srv:
        one = generate_over_http(srv.url, 1000, 0)
        out["1_client"] = {**one, "chars_per_s": one["chars"] / one["seconds"]}
        t0 = time.monotonic()
        with ThreadPoolExecutor(30) as pool:
            runs = list(pool.map(lambda i: generate_over_http(srv.url, 1000, i), range(30)))
        wall = time.monotonic() - t0
        done = [r for r in runs if "error" not in r and r["chars"] == 1000]
        firsts = [r["first_s"] for r in done]
        out["30_clients"] = {"completed": len(done), "errors": [r["error"] for r in runs if "error" in r],
                             "first_chars_median_s": statistics.median(firsts), "first_chars_worst_s": max(firsts),
                             "wall_s": wall, "total_chars_per_s": sum(r["chars"] for r in done) / wall}
        rss = {}
        for i in range(1, 1001):
            generate_over_http(srv.url, 50, i)
            if i in (10, 1000):
                rss[i] = peak_rss_mb()  # a peak that stays put: memory did not grow in between
        out["peak_rss_mb_after_requests"] = rss
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", action="append", required=True, metavar="NAME=DIR")
    args = p.parse_args()
    record = {"command": "python -m bench.share " + " ".join(f"--ckpt {c}" for c in args.ckpt), "pages": {}}
    for spec in args.ckpt:
        name, ckpt = spec.split("=", 1)
        state, cfg, vocab, meta = restore(ckpt)
        prime = meta["seeds"][0]
        python_text = generate(state.params, cfg, vocab, prime, length=1000, temperature=0.0)[0]
        page, info = export(ckpt)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.html"
            path.write_text(page, encoding="utf-8")
            figures = page_figures(path, python_text, prime)
        record["pages"][name] = {**info, "megabytes": info["bytes"] / 1e6, **figures,
                                 "near_ties_1000": near_ties(state.params, cfg, vocab, prime, 1000)}
        print(name, json.dumps(record["pages"][name]), flush=True)
    record["server"] = server_figures(args.ckpt[0].split("=", 1)[1])
    print(json.dumps(record["server"], indent=1))
    Path("bench/results/share.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
