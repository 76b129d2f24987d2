"""Every page of the smoke book, opened in headless Chromium without network (``pytest -m browser``).

Per page: no JavaScript console error, every ``<img>`` loaded (non-zero natural width), no raw ``\\(`` or
``$$`` left in the text once MathJax has run, no "Traceback" in the page. With ``DIFFSEG_ARTEFACTS=DIR`` set, a
full-page screenshot of each page is kept in ``DIR/browser``; they are off by default because they take about
two thirds of the test's time (22 of 31 s for the 32 pages of the book).

It needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``) and
the ``selenium`` package (a dev dependency); it skips, saying so, where they are missing. Selenium is pointed
at the system binaries: its own browser download does not work offline. The pages are served from
127.0.0.1 and every other host name resolves to nothing, so a page that needs the network fails here.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from conftest import REPO
from diffseg_core.book import toc_files

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in (os.environ.get("DIFFSEG_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).is_file()), None)
DRIVER = next((p for p in (os.environ.get("DIFFSEG_CHROMEDRIVER"), "/usr/bin/chromedriver", shutil.which("chromedriver"))
               if p and Path(p).is_file()), None)
ARTEFACTS = Path(os.environ["DIFFSEG_ARTEFACTS"]) / "browser" if os.environ.get("DIFFSEG_ARTEFACTS") else None
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900",
                  # offline on purpose: only the local server answers
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")

# Wait for MathJax (when the page loads it), then report what the test checks.
PAGE_REPORT_JS = """
const done = arguments[arguments.length - 1];
const deadline = Date.now() + 45000;
const report = () => {
  const imgs = Array.from(document.images).map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}));
  const body = document.body.cloneNode(true);
  body.querySelectorAll('pre, code, script, style, mjx-container, .highlight, textarea').forEach(e => e.remove());
  done({imgs: imgs, text: body.innerText, full: document.body.innerText,
        mathjax: !!(window.MathJax && MathJax.version), typeset: document.querySelectorAll('mjx-container').length});
};
const settle = () => Promise.all(Array.from(document.images).map(i => i.complete ? null :
  new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
const wait = () => {
  const late = Date.now() > deadline;
  if (document.readyState !== 'complete' && !late) return setTimeout(wait, 100);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    return MathJax.startup.promise.then(settle).then(report, report);
  }
  if (document.querySelector('.math') && !late) return setTimeout(wait, 100);  // MathJax not started yet
  settle().then(report, report);
};
wait();
"""


def _skip_reason() -> str | None:
    if CHROMIUM is None or DRIVER is None:
        return ("Chromium is not installed (need /usr/bin/chromium and /usr/bin/chromedriver: "
                "apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def served_book(smoke_book):
    """The smoke book's HTML served on 127.0.0.1 (a random free port) for the module's tests."""
    out, status = smoke_book
    assert status == 0, "the main job failed; the browser test needs the built book"
    html = out / "src" / "_build" / "html"
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_every_page_renders_offline_without_errors(request):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    base = request.getfixturevalue("served_book")
    driver = request.getfixturevalue("browser")
    if ARTEFACTS is not None:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    pages = toc_files(REPO / "_toc.yml")
    for page in pages:
        driver.get_log("browser")  # drop what earlier pages left
        driver.get(f"{base}/{page}.html")
        info = driver.execute_async_script(PAGE_REPORT_JS)
        if ARTEFACTS is not None:
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1280, min(max(900, height), 16000))
            driver.save_screenshot(str(ARTEFACTS / f"{page.replace('/', '__')}.png"))
            driver.set_window_size(1280, 900)
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        problems += [f"{page}: console error: {m}" for m in errors]
        problems += [f"{page}: image not loaded: {i['src'][:120]}" for i in info["imgs"] if not i["ok"]]
        for raw in ("\\(", "\\)", "$$", "\\[", "\\begin{"):
            if raw in info["text"]:
                at = info["text"].index(raw)
                problems.append(f"{page}: raw math {raw!r} left in the text: ...{info['text'][max(0, at - 60):at + 60]!r}")
        if "Traceback" in info["full"]:
            problems.append(f"{page}: 'Traceback' in the page")
        print(f"{page}: {len(info['imgs'])} images, {info['typeset']} formulas typeset, "
              f"{len(errors)} console errors")
    print(f"screenshots of {len(pages)} pages in {ARTEFACTS}" if ARTEFACTS is not None else
          f"{len(pages)} pages checked (DIFFSEG_ARTEFACTS=DIR keeps a screenshot of each)")
    assert not problems, "\n".join(problems)
