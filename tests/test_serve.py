"""charlm-serve: the handlers over real HTTP (status codes, limits, concurrency), then the page in
a real headless Chromium. The browser test is skipped where Chromium, its driver or selenium
is missing (Debian: apt-get install chromium chromium-driver)."""

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from charlm.config import make_run_config
from charlm.serve import MAX_BODY, App, make_server
from charlm.trainer import train

TEXT = "alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do. " * 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_run_config(hidden=16, seq_length=10, batch_size=32, epochs=2, val_frac=0.1, input_encoding="onehot")
    train(TEXT, cfg, run_dir, log=lambda s: None, progress=False)
    app = App(str(run_dir))
    app.warm_up()
    httpd = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_address[1]}", app=app)
    httpd.shutdown()
    httpd.server_close()


def request(url, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=120) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def generated(payload: str) -> tuple[str, dict]:
    lines = [json.loads(line) for line in payload.splitlines()]
    return "".join(m.get("text", "") for m in lines), lines[-1]


def test_page_card_and_metrics(server):
    status, kind, page = request(server.url + "/")
    assert status == 200 and kind.startswith("text/html") and 'id="generate"' in page
    status, _, card = request(server.url + "/api/model")
    card = json.loads(card)
    assert status == 200 and card["epochs"] == 2 and card["val_bits_per_char"] > 0 and card["vocab_size"] > 10
    assert card["config"]["model"]["hidden"] == 16 and card["limits"]["length"] == [1, 5000]
    status, _, metrics = request(server.url + "/api/metrics")
    assert status == 200 and [r["epoch"] for r in json.loads(metrics)] == [1, 2]
    assert request(server.url + "/nope")[0] == 404


def test_generate_streams_ndjson_and_is_seeded(server):
    body = {"prime": "alice", "length": 100, "temperature": "0.9", "top_p": 0.9, "seed": 4}
    status, kind, payload = request(server.url + "/api/generate", body)
    assert status == 200 and kind.startswith("application/x-ndjson")
    text, last = generated(payload)
    assert len(text) == 100 and last["done"] and last["chars"] == 100
    assert generated(request(server.url + "/api/generate", body)[2])[0] == text
    assert len(payload.splitlines()) > 2, "text comes in several chunks"
    # the page sends every field as typed; blank means off (top-k, top-p, n-gram, seed) or the default
    blank = {"prime": "alice", "length": "", "temperature": "0", "top_k": "", "top_p": "", "no_repeat_ngram": "",
             "repetition_penalty": "", "seed": ""}
    status, _, payload = request(server.url + "/api/generate", blank)
    assert status == 200 and len(generated(payload)[0]) == 500


@pytest.mark.parametrize("body, status, words", [
    ({"prime": "alice€"}, 400, "not in the model's vocabulary"),
    ({"prime": "alice", "length": 999999}, 400, "length must be between 1 and 5000"),
    ({"prime": "alice", "temperature": "warm"}, 400, "temperature must be a number"),
    ({"prime": "alice", "top_k": 2.5}, 400, "top_k must be a whole number"),
    ({"prime": "alice", "temperature": float("nan")}, 400, "temperature must be between"),
    ({"prime": "alice", "colour": 1}, 400, "unknown parameter(s): colour"),
    ({"prime": ""}, 400, "prime must be some text"),
    ({"prime": "a" * 3000}, 400, "the limit is 2000"),
    (b"{not json", 400, "must be a JSON object"),
    (b"x" * (MAX_BODY + 1), 413, "over 16384 bytes"),
])
def test_bad_requests_get_a_4xx_and_a_message(server, body, status, words):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, kind, payload = request(server.url + "/api/generate", raw=raw)
    assert got == status and kind == "application/json" and words in json.loads(payload)["error"]


def test_eight_generations_at_once_all_complete(server):
    bodies = [{"prime": "alice", "length": 300, "temperature": 1.0, "seed": i} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: request(server.url + "/api/generate", b), bodies))
    texts = [generated(payload)[0] for status, _, payload in results]
    assert all(status == 200 for status, _, _ in results) and [len(t) for t in texts] == [300] * 8
    assert len(set(texts)) == 8
    assert request(server.url + "/api/model")[0] == 200, "the server is still alive"


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def test_the_page_in_a_headless_browser(server, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    app, fast, sent = server.app, server.app.generate, []

    def slowly(params):  # the tiny model writes 5,000 chars in ~0.1 s: slow it to press Stop midway
        for piece in fast(params):
            time.sleep(0.02)
            sent.append(piece)
            yield piece

    try:
        wait = WebDriverWait(browser, 60, poll_frequency=0.02)
        browser.get(server.url + "/")
        wait.until(lambda b: "val bits/char" in b.find_element(By.ID, "card").text)
        assert browser.find_elements(By.CSS_SELECTOR, "#curve polyline.loss")
        field = lambda name: browser.find_element(By.ID, name)
        field("prime").clear()
        field("prime").send_keys("alice was")
        field("length").clear()
        field("length").send_keys("5000")
        monkeypatch.setattr(app, "generate", slowly)
        field("generate").click()
        # text arrives while the generation is still running, then Stop ends it, on the server too
        wait.until(lambda b: len(b.find_element(By.ID, "generated").text) > 0)
        assert field("stop").is_enabled() and len(field("generated").text) < 5000
        field("stop").click()
        wait.until(lambda b: b.find_element(By.ID, "status").text == "stopped")
        assert field("generate").is_enabled()
        time.sleep(0.3)
        stopped_at = len(sent)
        time.sleep(0.3)
        assert len(sent) == stopped_at and len("".join(sent)) < 5000, "the server stopped generating"
        monkeypatch.setattr(app, "generate", fast)
        # a whole short generation
        field("length").clear()
        field("length").send_keys("200")
        field("generate").click()
        wait.until(lambda b: "200 chars in" in b.find_element(By.ID, "status").text)
        assert len(field("generated").text.replace("\n", "")) <= 200
        assert int(field("output").get_attribute("data-chunks")) > 1, "the text came in pieces"
        # a bad request shows its message on the page
        field("temperature").clear()
        field("temperature").send_keys("hot")
        field("generate").click()
        wait.until(lambda b: "temperature must be a number" in b.find_element(By.ID, "error").text)
    finally:
        browser.quit()


def test_inspect_route_answers_a_report_and_refuses_bad_input_with_a_message(server):
    status, kind, page = request(server.url + "/inspect")
    assert status == 200 and kind.startswith("text/html") and 'id="inspect"' in page
    text = "alice was beginning to get very tired"
    status, _, body = request(server.url + "/api/inspect", {"text": text, "span": [6, 9], "units": ["L1.c2"]})
    report = json.loads(body)
    assert status == 200 and "".join(report["chars"]) == text and len(report["span"]["top"]) == 10
    assert "L1.c2" in report["activations"] and report["bits_per_char"] > 0
    bad = [({"text": "a" * 2001}, "the limit is 2000"), ({"text": "alice€"}, "not in the model's vocabulary"),
           ({"text": ""}, "text must be some text"), ({"text": "alice", "span": "1-2"}, "span must be [start, end]"),
           ({"text": "alice", "span": [3, 99]}, "the span must be part of the text"),
           ({"text": "alice", "units": ["L7.h1"]}, "no unit 'L7.h1'"), ({"text": "alice", "units": "L1.h1"}, "units must be a list"),
           ({"text": "alice", "colour": 1}, "unknown parameter(s): colour")]
    for body, words in bad:
        got, kind, payload = request(server.url + "/api/inspect", body)
        assert got == 400 and kind == "application/json" and words in json.loads(payload)["error"], (body, payload)
    got, _, payload = request(server.url + "/api/inspect", raw=b"{nope")
    assert got == 400 and "must be a JSON object" in json.loads(payload)["error"]


def test_the_inspect_view_in_a_headless_browser(server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        wait = WebDriverWait(browser, 60, poll_frequency=0.05)
        browser.get(server.url + "/inspect")
        field = lambda name: browser.find_element(By.ID, name)
        wait.until(lambda b: field("input").get_attribute("value"))
        field("input").clear()
        field("input").send_keys("alice was beginning to get very tired of sitting")
        field("inspect").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#text span")) == 48)
        assert "bits/char" in field("bpc").text
        chars = browser.find_elements(By.CSS_SELECTOR, "#text span")
        assert chars[5].value_of_css_property("background-color") != chars[0].value_of_css_property("background-color")
        ActionChains(browser).move_to_element(chars[10]).perform()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#hover .guess")) == 5)
        # select "beginning" with the mouse's API and release it: the page asks for its units
        browser.execute_script("""
            const s = document.querySelectorAll('#text span'), r = document.createRange();
            r.setStart(s[10].firstChild, 0); r.setEnd(s[18].firstChild, 1);
            const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(r);
            document.getElementById('text').dispatchEvent(new MouseEvent('mouseup', {bubbles: true}));""")
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#span-units li")) == 10)
        assert "chars 10..18" in field("span").text
        browser.find_element(By.CSS_SELECTOR, "#span-units a.unit").click()
        wait.until(lambda b: "unit L1." in field("legend").text)
        assert browser.find_elements(By.CSS_SELECTOR, "#hypotheses tbody tr")
        # bad input shows its message on the page
        field("input").clear()
        field("input").send_keys("alice€")
        field("inspect").click()
        wait.until(lambda b: "not in the model's vocabulary" in field("error").text)
        browser.execute_script("document.getElementById('input').value = 'a'.repeat(2001)")
        field("inspect").click()
        wait.until(lambda b: "the limit is 2000" in field("error").text)
    finally:
        browser.quit()


class running:
    """Another server over the same app, with its own limits, for the tests that need them."""

    def __init__(self, app, **kw):
        self.httpd = make_server(app, "127.0.0.1", 0, **kw)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def slowed(app, monkeypatch, sent):
    fast = app.generate

    def slowly(params):
        for piece in fast(params):
            time.sleep(0.05)
            sent.append(piece)
            yield piece
    monkeypatch.setattr(app, "generate", slowly)


def raw_request(port, head: bytes, read: bool = True) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        return s.makefile("rb").read() if read else b""


def test_beyond_its_streams_the_server_answers_busy_and_a_client_that_leaves_frees_its_slot(server, monkeypatch):
    import socket

    sent = []
    slowed(server.app, monkeypatch, sent)
    body = json.dumps({"prime": "alice", "length": 3000, "temperature": 1.0}).encode()
    head = (f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with running(server.app, max_streams=2) as srv:
        clients = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(2)]
        for c in clients:
            c.sendall(head)
            assert c.recv(100).startswith(b"HTTP/1.0 200")
        status, _, payload = request(srv.url + "/api/generate", {"prime": "alice"})
        assert status == 503 and "busy" in json.loads(payload)["error"]
        for c in clients:  # both leave mid-stream
            c.close()
        time.sleep(0.5)
        stopped_at = len(sent)
        time.sleep(0.5)
        assert len(sent) == stopped_at < 2 * 3000 // 32, "the server stopped generating for them"
        monkeypatch.undo()
        status, _, payload = request(srv.url + "/api/generate", {"prime": "alice", "length": 50})
        assert status == 200 and len(generated(payload)[0]) == 50, "their slots are free again"


def test_a_request_that_never_finishes_sending_is_dropped_after_its_timeout(server, monkeypatch):
    from charlm import serve

    monkeypatch.setattr(serve, "REQUEST_TIMEOUT", 0.5)
    with running(server.app) as srv:
        t0 = time.monotonic()
        answer = raw_request(srv.port, b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        assert answer == b"" and time.monotonic() - t0 < 5
        assert request(srv.url + "/api/model")[0] == 200


def test_only_requests_meant_for_it_are_answered(server):
    def with_headers(url, headers, body=None):
        req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    with running(server.app, allowed_names=["teacher.local"]) as srv:
        card = srv.url + "/api/model"
        status, payload = with_headers(card, {"Host": "rebound.example.com"})  # DNS rebinding: a name resolving here
        assert status == 403 and "--allow-host" in json.loads(payload)["error"]
        assert with_headers(card, {"Host": f"teacher.local:{srv.port}"})[0] == 200
        assert with_headers(card, {"Host": f"localhost:{srv.port}"})[0] == 200
        assert with_headers(card, {"Host": f"192.168.1.20:{srv.port}"})[0] == 200  # a LAN address, as a class types it
        gen = srv.url + "/api/generate"
        status, payload = with_headers(gen, {"Origin": "https://evil.example"}, {"prime": "alice", "length": 10})
        assert status == 403 and "other sites" in json.loads(payload)["error"]
        status, _ = with_headers(gen, {"Origin": f"http://127.0.0.1:{srv.port}"}, {"prime": "alice", "length": 10})
        assert status == 200


def test_clients_that_hang_up_leave_one_log_line_each_and_no_traceback(server, capfd):
    body = json.dumps({"prime": "alice", "length": 3000}).encode()
    head = (f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with running(server.app) as srv:
        capfd.readouterr()
        for _ in range(10):
            raw_request(srv.port, head, read=False)  # sends and hangs up at once
        raw_request(srv.port, b"GARBAGE\r\n\r\n")
        raw_request(srv.port, b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\n", read=False)
        time.sleep(1.0)
        assert request(srv.url + "/api/model")[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert len(err.strip().splitlines()) <= 13, err
