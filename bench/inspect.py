"""What a checkpoint's units track, and how fast the Inspect view answers.

    python -m bench.inspect --ckpt DIR --text ../shared/data/wonderland.txt --chars 5000
    python -m bench.inspect --ckpt DIR --text ../shared/data/wonderland.txt --screenshot docs/inspect.png

Reads the text's last --chars chars (cleaned as the checkpoint's training cleaned them; for a
checkpoint trained with --test-frac 0.1 that is text it never trained on), and writes to
bench/results/inspect-<name>.json: the best unit for each ready hypothesis with its AUC and
Cohen's d, each layer's gate saturation (the mean share of chars below 0.1 and above 0.9, and
the units saturated more than half the time) and the seconds charlm-serve's Inspect request
takes for a 2,000-char text after its warm-up (the median of 5). A table is printed.
--screenshot also photographs the Inspect view in headless Chromium (selenium), its text the
tail's last 700 chars coloured by the best "inside quotes" unit, with a char's guesses showing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from charlm.checkpoint import restore
from charlm.corpus import clean_text, read_text
from charlm.inspect import encode_text, inspection
from charlm.serve import MAX_INSPECT, App

RESULTS = Path("bench/results")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--chars", type=int, default=5000)
    p.add_argument("--name", default=None, help="result file name (default: the checkpoint directory's name)")
    p.add_argument("--screenshot", metavar="PNG", help="photograph the Inspect view here")
    args = p.parse_args()

    state, cfg, vocab, _ = restore(args.ckpt)
    d = cfg.data
    text = clean_text(read_text(args.text), lowercase=d.lowercase, strip_punctuation=d.strip_punctuation)
    tail = text[-args.chars:]
    report = inspection(state.params, cfg, vocab, encode_text(tail, vocab, cfg, args.chars))

    app = App(args.ckpt)
    app.warm_up()
    body = json.dumps({"text": tail[-MAX_INSPECT:]}).encode()
    seconds = []
    for _ in range(5):
        t0 = time.perf_counter()
        app.inspect(body)
        seconds.append(time.perf_counter() - t0)

    saturation = []
    for layer in report["saturation"]:
        gates = {}
        for gate, shares in layer["gates"].items():
            low, high = np.array(shares["low"]), np.array(shares["high"])
            gates[gate] = {"mean_low": round(float(low.mean()), 4), "mean_high": round(float(high.mean()), 4),
                           "units_mostly_low": int((low > 0.5).sum()), "units_mostly_high": int((high > 0.5).sum())}
        saturation.append({"layer": layer["layer"], "gates": gates})
    record = {
        "command": "python -m bench.inspect " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None),
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} {jax.devices()[0].platform}",
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "model": report["model"], "chars": len(tail), "bits_per_char": report["bits_per_char"],
        "hypotheses": [{"name": h["name"], "chars": h["chars"], "best": h["top"][0]} for h in report["hypotheses"]],
        "saturation": saturation,
        "inspect_2000_chars_s": {"median": round(statistics.median(seconds), 3), "all": [round(s, 3) for s in seconds]},
    }
    if args.screenshot:
        screenshot(app, tail[-700:], args.screenshot)
    name = args.name or Path(args.ckpt).name
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"inspect-{name}.json").write_text(json.dumps(record, indent=1))
    print(f"{name}: {record['model']}, last {len(tail)} chars, {report['bits_per_char']:.4f} bits/char")
    print(f"{'hypothesis':30s} {'chars':>6s} {'best unit':>10s} {'AUC':>6s} {'d':>6s}")
    for h in record["hypotheses"]:
        b = h["best"]
        print(f"{h['name']:30s} {h['chars']:6d} {b['unit']:>10s} {b['auc']:6.3f} {b['effect']:+6.2f}")
    for layer in saturation:
        for gate, s in layer["gates"].items():
            print(f"layer {layer['layer']} gate {gate}: below 0.1 {s['mean_low']:.1%}, above 0.9 {s['mean_high']:.1%}; "
                  f"units mostly below {s['units_mostly_low']}, mostly above {s['units_mostly_high']}")
    print(f"Inspect request, 2,000 chars: median {record['inspect_2000_chars_s']['median']:.3f} s")


def screenshot(app: App, text: str, out: str) -> None:
    import threading

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from charlm.serve import make_server
    from tests.test_serve import _browser

    httpd = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    browser = _browser()
    try:
        browser.set_window_size(1100, 1300)
        browser.get(f"http://127.0.0.1:{httpd.server_address[1]}/inspect")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "input").get_attribute("value"))
        browser.execute_script("document.getElementById('input').value = arguments[0]", text)
        browser.find_element(By.ID, "inspect").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#text span")) == len(text))
        rows = browser.find_elements(By.CSS_SELECTOR, "#hypotheses tbody tr")
        quotes = [r for r in rows if r.text.startswith("inside quotes")] or rows
        quotes[0].find_element(By.CSS_SELECTOR, "a.unit").click()
        spans = browser.find_elements(By.CSS_SELECTOR, "#text span")
        ActionChains(browser).move_to_element(spans[len(text) // 3]).perform()
        browser.save_screenshot(out)
    finally:
        browser.quit()
        httpd.shutdown()


if __name__ == "__main__":
    main()
