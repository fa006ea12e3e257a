"""What a checkpoint's units track, and how fast the Inspect view answers.

    python -m bench.inspect --ckpt DIR --text ../shared/data/wonderland.txt --screenshot docs/inspect.png

On the text's last --chars chars: each hypothesis's best unit, its AUC and Cohen's d, and its
AUC on the --chars before (a unit picked as the best of hundreds flatters itself); gate
saturation; the Inspect request's seconds for 2,000 chars once warm. Writes
bench/results/inspect-<checkpoint dir>.json; --screenshot photographs the Inspect view.
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
from pathlib import Path

import jax
import numpy as np

from bench.perfkit import time_calls
from charlm import probe
from charlm.checkpoint import restore
from charlm.corpus import clean_text, read_text
from charlm.inspect import encode_text, inspection
from charlm.serve import MAX_INSPECT, App, make_server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--chars", type=int, default=5000)
    p.add_argument("--screenshot", metavar="PNG", help="photograph the Inspect view here")
    args = p.parse_args()
    state, cfg, vocab, _ = restore(args.ckpt)
    text = clean_text(read_text(args.text), lowercase=cfg.data.lowercase, strip_punctuation=cfg.data.strip_punctuation)
    tail, before = text[-args.chars:], text[-2 * args.chars:-args.chars]
    report = inspection(state.params, cfg, vocab, encode_text(tail, vocab, cfg, args.chars))
    names, acts = probe.trace(state.params, cfg.model, encode_text(before, vocab, cfg, args.chars)).units()
    elsewhere = {h.name: h for h in probe.hypotheses(before)}

    def auc_before(name: str, unit: str) -> float | None:
        h = elsewhere.get(name)
        among = slice(None) if h is None or h.among is None else h.among
        return h and round(float(probe.auc_per_unit(acts[among][:, [names.index(unit)]], h.chosen[among])[0]), 4)

    app = App(args.ckpt)
    app.warm_up()
    timing = time_calls(lambda: app.inspect(json.dumps({"text": tail[-MAX_INSPECT:]}).encode()), reps=5)
    record = {
        "command": f"python -m bench.inspect --ckpt {args.ckpt} --text {args.text} --chars {args.chars}",
        "machine": f"{platform.machine()}, {jax.device_count()} {jax.devices()[0].platform} device(s)",
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "model": report["model"], "chars": len(tail), "bits_per_char": report["bits_per_char"],
        "hypotheses": [{"name": h["name"], "chars": h["chars"], "best": h["top"][0],
                        "auc_on_the_chars_before": auc_before(h["name"], h["top"][0]["unit"])}
                       for h in report["hypotheses"]],
        "saturation": [{"layer": layer["layer"], "gates": {g: {k: [round(float(np.mean(s[k])), 4), int(
            (np.array(s[k]) > 0.5).sum())] for k in ("low", "high")} for g, s in layer["gates"].items()}}
            for layer in report["saturation"]],  # [mean share of chars, units past it more than half the time]
        "inspect_2000_chars_s": round(timing["seconds"], 3),
    }
    Path(f"bench/results/inspect-{Path(args.ckpt).name}.json").write_text(json.dumps(record, indent=1))
    print(f"{Path(args.ckpt).name}: {record['model']}, last {len(tail)} chars, {report['bits_per_char']:.4f} bits/char")
    print(f"{'hypothesis':30s} {'chars':>6s} {'best unit':>10s} {'AUC':>6s} {'d':>6s} {'AUC before':>10s}")
    for h in record["hypotheses"]:
        b, other = h["best"], h["auc_on_the_chars_before"]
        print(f"{h['name']:30s} {h['chars']:6d} {b['unit']:>10s} {b['auc']:6.3f} {b['effect']:+6.2f} "
              f"{'-' if other is None else f'{other:.3f}':>10s}")
    for layer in record["saturation"]:
        for g, s in layer["gates"].items():
            print(f"layer {layer['layer']} gate {g}: below 0.1 {s['low'][0]:.1%}, above 0.9 {s['high'][0]:.1%} of "
                  f"the time; units mostly below {s['low'][1]}, mostly above {s['high'][1]}")
    print(f"Inspect request, 2,000 chars: median {record['inspect_2000_chars_s']:.3f} s")
    if args.screenshot:
        screenshot(app, tail[:700], args.screenshot)


def screenshot(app: App, text: str, out: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_serve import _browser  # the suite's headless Chromium

    httpd = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    browser = _browser()
    try:
        browser.set_window_size(1100, 1300)
        browser.get(f"http://127.0.0.1:{httpd.server_address[1]}/inspect")
        find, wait = browser.find_elements, WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "input").get_attribute("value"))
        browser.execute_script("document.getElementById('input').value = arguments[0]", text)
        browser.find_element(By.ID, "inspect").click()
        wait.until(lambda b: len(find(By.CSS_SELECTOR, "#text span")) == len(text))
        rows = find(By.CSS_SELECTOR, "#hypotheses tbody tr")
        ([r for r in rows if r.text.startswith("inside quotes")] or rows)[0].find_element(By.CSS_SELECTOR, "a.unit").click()
        ActionChains(browser).move_to_element(find(By.CSS_SELECTOR, "#text span")[len(text) // 3]).perform()
        browser.save_screenshot(out)
    finally:
        browser.quit()
        httpd.shutdown()


if __name__ == "__main__":
    main()
