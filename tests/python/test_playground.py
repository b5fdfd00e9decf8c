"""The web playground in a real browser: headless Chromium (Debian's package, driven by
Playwright with that browser; nothing downloaded) against the real server on 127.0.0.1
(scripts/test.sh runs it).

1. `/` leads to the page, which loads with no console errors and asks nothing of any other host;
2. a question typed and sent streams its answer token by token (several updates seen), with the
   answer's timings shown;
3. Stop ends a long stream and the server frees its sequence (running requests back to 0);
4. a JSON-schema answer is shown parsed, a required tool call with its arguments;
5. a model answer that is `<img src=x onerror=...>` (forced by a regex grammar) is shown as
   text and never runs, in the Markdown view and the token view;
6. with `--api-key` the page asks for the key before calling anything, a wrong key shows the
   server's 401 message, the right one opens the chat;
7. `--no-ui` serves no page.

Screenshots (empty, mid-stream, log-probabilities on hover, structured output) go to the directory given as the third
argument.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright

from wickserver import start

BIN = sys.argv[1]
MODEL = sys.argv[2]
SHOTS = sys.argv[3] if len(sys.argv) > 3 else "target/playground"
CHROMIUM = os.environ.get("WICK_CHROMIUM", "/usr/bin/chromium")
KEY = "sk-playground"
os.makedirs(SHOTS, exist_ok=True)

# Chromium's own background traffic is off: this machine's network is closed.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def gauge(base, name):
    with urllib.request.urlopen(f"{base}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def open_page(browser, base):
    """A fresh page on `base` that records console errors and any request leaving loopback."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.errors, page.foreign = [], []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))

    def route(r):
        if r.request.url.startswith(base):
            r.continue_()
        else:
            page.foreign.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return page


def last_answer(page):
    return page.locator(".message.assistant").last


def wait_done(page, timeout=240_000):
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('.message.assistant')].pop();"
        " return m && m.dataset.state !== 'streaming'; }", timeout=timeout)
    page.wait_for_timeout(100)  # the last frame's redraw


def check_chat(browser, base):
    page = open_page(browser, base)
    response = page.goto(f"{base}/")
    assert response.url == f"{base}/ui/", response.url
    csp = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp, csp
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function("() => document.querySelector('#server-status').className === 'ok'")
    assert "smol" in page.inner_text("#server-status")
    page.screenshot(path=f"{SHOTS}/empty.png")

    # 2. Streaming, token by token: every change of the answer's text is recorded.
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "48")
    page.evaluate("""() => {
        window.__texts = [];
        new MutationObserver(() => {
            const m = [...document.querySelectorAll('.message.assistant .body')].pop();
            const t = m ? m.textContent : '';
            if (t && window.__texts[window.__texts.length - 1] !== t) window.__texts.push(t);
        }).observe(document.querySelector('#messages'), {childList: true, subtree: true, characterData: true});
    }""")
    page.fill("#input", "Name three colors of the rainbow.")
    page.click("#send")
    page.wait_for_function("() => window.__texts.length >= 3", timeout=120_000)
    page.screenshot(path=f"{SHOTS}/streaming.png")
    wait_done(page)
    texts = page.evaluate("() => window.__texts")
    final = last_answer(page).locator(".body").inner_text()
    assert len(texts) >= 3 and final.strip(), (texts, final)
    stats = last_answer(page).locator(".stats").inner_text()
    assert "TTFT" in stats and "tokens/s" in stats and "cached" in stats, stats
    print(f"playground: streamed in {len(texts)} updates: {final[:60]!r}; {stats}")
    # The tokens view: one span per token, log-probabilities on hover.
    last_answer(page).locator(".toggle-view").click()
    page.locator(".message.assistant .token").first.hover()
    tip = page.inner_text(".tip")
    assert "logprob=" in tip and "%" in tip, tip
    page.screenshot(path=f"{SHOTS}/logprobs.png")

    # 3. Stop: the stream ends and the server frees the sequence.
    page.fill("#max_tokens", "400")
    page.fill("#input", "Write a long story about a lighthouse keeper.")
    page.click("#send")
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('.message.assistant')].pop();"
        " return m && m.querySelector('.body').textContent.length > 20; }", timeout=120_000)
    assert gauge(base, "wick_requests_running") == 1
    page.click("#stop-button")
    page.wait_for_selector(".message.assistant[data-state='stopped']")
    deadline = time.time() + 10
    while gauge(base, "wick_requests_running") != 0 and time.time() < deadline:
        time.sleep(0.1)
    assert gauge(base, "wick_requests_running") == 0, "the stopped stream still runs"
    assert gauge(base, "wick_requests_waiting") == 0
    print(f"playground: stopped after {len(last_answer(page).inner_text())} characters; running 0")

    # 4. Structured output: a JSON-schema answer, shown parsed.
    page.click("#clear")
    page.fill("#max_tokens", "64")
    page.select_option("#format", "json_schema")
    page.fill("#format-spec", json.dumps({
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                         "age": {"type": "integer"}},
        "required": ["name", "age"]}))
    page.fill("#input", "Invent a person: a name and an age.")
    page.click("#send")
    wait_done(page)
    parsed = last_answer(page).locator(".parsed pre").inner_text()
    value = json.loads(parsed)
    assert isinstance(value["name"], str) and isinstance(value["age"], int), value
    page.screenshot(path=f"{SHOTS}/structured.png")
    print(f"playground: structured answer parsed: {value}")

    # Tools: a required call is shown with its arguments parsed.
    page.click("#clear")
    page.select_option("#format", "tools")
    page.check("#tool-required")
    page.fill("#input", "What is the weather in Paris?")
    page.click("#send")
    wait_done(page)
    call = last_answer(page).locator(".tool-call")
    assert call.locator(".tool-name").inner_text() == "tool call: get_weather"
    arguments = json.loads(call.locator("pre").inner_text())
    assert isinstance(arguments["city"], str), arguments
    print(f"playground: tool call shown: get_weather({arguments})")

    # 5. Hostile output: the model is made to answer with an HTML tag that would run script.
    page.click("#clear")
    page.select_option("#format", "regex")
    page.fill("#format-spec", r"<img src=x onerror=window\.__pwned=1> and <script>window\.__pwned=2</script>")
    page.fill("#input", "Say something.")
    page.click("#send")
    wait_done(page)
    answer = last_answer(page)
    assert "<img src=x onerror=window.__pwned=1>" in answer.locator(".body").inner_text()
    assert page.locator("#messages img, #messages script").count() == 0
    answer.locator(".toggle-view").click()
    assert "onerror" in last_answer(page).locator(".tokens").inner_text()
    assert page.locator("#messages img, #messages script").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__pwned") is None
    page.select_option("#format", "none")

    assert not page.errors, page.errors
    assert not page.foreign, page.foreign
    page.close()


def check_key(browser, base):
    page = open_page(browser, base)
    requests = []
    page.on("request", lambda r: requests.append(r.url.removeprefix(base)))
    page.goto(f"{base}/ui/")
    page.wait_for_selector("#key-dialog[open]")
    assert not [u for u in requests if u.startswith("/v1") or u in ("/info", "/metrics")], requests
    page.fill("#key-input", "sk-wrong")
    page.click("#key-submit")
    page.wait_for_selector("#key-error:not([hidden])")
    message = page.inner_text("#key-error")
    assert message.startswith("401"), message
    print(f"playground: a wrong key shows {message!r}")
    page.fill("#key-input", KEY)
    page.click("#key-submit")
    page.wait_for_selector("body[data-ready='1']")
    assert not page.locator("#key-dialog[open]").count()
    assert page.evaluate("() => sessionStorage.getItem('wick-api-key')") == KEY
    assert page.evaluate("() => localStorage.length") == 0
    page.fill("#max_tokens", "8")
    page.fill("#input", "Hi")
    page.click("#send")
    wait_done(page)
    assert last_answer(page).get_attribute("data-state") == "done"
    # Only the wrong key's 401 may show in the console (Chromium logs failed loads).
    assert all("401" in e for e in page.errors), page.errors
    assert not page.foreign, page.foreign
    page.close()


def main():
    proc, base = start(BIN, MODEL)
    keyed, keyed_base = start(BIN, MODEL, "--api-key", KEY)
    plain, plain_base = start(BIN, MODEL, "--no-ui")
    try:
        try:
            urllib.request.urlopen(f"{plain_base}/")
            raise AssertionError("--no-ui still serves /")
        except urllib.error.HTTPError as e:
            assert e.code == 404, e.code
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            check_chat(browser, base)
            check_key(browser, keyed_base)
            browser.close()
    finally:
        for server in (proc, keyed, plain):
            server.kill()
            server.wait()
    print(f"playground: every check passed; screenshots in {SHOTS}")


main()
