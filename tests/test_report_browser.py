"""report.html of a tiny trained run, opened in a real headless browser (Chromium).

The page is copied alone into an empty folder, so that every plot must come from the page
itself; Chromium loads it through the DevTools protocol (over ``--remote-debugging-pipe``,
Python's standard library only), and the test reads back every image's decoded size and
every console message, script exception and failed resource load.
"""

import json
import os
import queue
import shutil
import subprocess
import threading
import time

import pytest

from openmm_cmt.evaluation import evaluate
from openmm_cmt.presets import preset
from openmm_cmt.sampler import BoltzmannGeneratorSampler

INSTALL_HINT = ("chromium is needed to check report.html in a browser and was not found on PATH; "
                "install it with `apt-get install -y chromium` (Debian/Ubuntu; .ci/run does this in CI)")
TIMEOUT_S = 60.0
FIGURES = ("ess", "weights", "ramachandran", "energy", "annealing", "phases", "basins")


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pair of pipes (the
    browser reads commands from its fd 3 and writes replies and events to its fd 4,
    each message JSON ended by a NUL byte)."""

    def __init__(self, profile_dir):
        exe = shutil.which("chromium")
        if exe is None:
            pytest.fail(INSTALL_HINT)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds():  # in the child, before exec: fd 3 and 4 are the protocol's pipes
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", "--remote-debugging-pipe",
                f"--user-data-dir={profile_dir}", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=wire_fds, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                self._messages.put(None)
                return
            buf += chunk
            *complete, buf = buf.split(b"\0")
            for raw in complete:
                self._messages.put(json.loads(raw))

    def send(self, method, params=None, session=None):
        """The result of one command; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self._next_id, f"the reply to {method}")
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def wait(self, match, what, since=None):
        """The first message that ``match``es; with ``since``, also the events already
        received from that index on."""
        for m in self.events[since:] if since is not None else ():
            if match(m):
                return m
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                m = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"chromium sent no {what} within {TIMEOUT_S:.0f} s") from None
            if m is None:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"chromium exited while waiting for {what}:\n{err}")
            if "method" in m:
                self.events.append(m)
            if match(m):
                return m

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self.proc.stderr.close()


def open_page(url, profile_dir) -> tuple[list[dict], list[str], str]:
    """Load ``url``; return its images' (alt, src prefix, naturalWidth/Height, complete),
    the problems the browser reported (console errors and warnings, exceptions, failed
    loads), and the page's text."""
    browser = Chromium(profile_dir)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        since = len(browser.events)
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait(lambda m: m.get("method") == "Page.loadEventFired", "load event", since)
        loaded = browser.send("Runtime.evaluate", {"expression": "[location.href, document.readyState]",
                                                   "returnByValue": True}, session=session)["result"]["value"]
        assert loaded == [url, "complete"], loaded
        images = browser.send("Runtime.evaluate", {"expression": """
            Promise.all([...document.images].map(i => i.decode().then(() => true, () => false)))
              .then(decoded => JSON.stringify([...document.images].map((i, k) => ({
                  alt: i.alt, src: i.src.slice(0, 22), width: i.naturalWidth, height: i.naturalHeight,
                  complete: i.complete, decoded: decoded[k]}))))""",
            "awaitPromise": True, "returnByValue": True}, session=session)["result"]["value"]
        text = browser.send("Runtime.evaluate", {"expression": "document.body.innerText", "returnByValue": True},
                            session=session)["result"]["value"]
    finally:
        browser.close()
    problems = []
    for e in browser.events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            problems.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            problems.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            problems.append(f"log {p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif e["method"] == "Network.loadingFailed":
            problems.append(f"failed load: {p.get('errorText')}")
    return json.loads(images), problems, text


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    """report.html of a two-step run on alanine dipeptide evaluated against the shipped
    reference, copied alone into an empty folder."""
    config = preset("laptop", generator=dict(n_layers=2, hidden=16, depth=1, scaling="fixed"),
                    cmt=dict(n_steps=2, samples_per_step=256, buffer_size=512, grad_steps_per_step=2, batch_size=128),
                    energy_compile=False, device="cpu", checkpoint_every=0, eval_samples=300)
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=config)
    sampler.train(progress=False)
    run = tmp_path_factory.mktemp("evaluation")
    evaluate(sampler, run, n_samples=300, n_draws=2)
    alone = tmp_path_factory.mktemp("alone")
    shutil.copy(run / "report.html", alone / "report.html")
    return alone / "report.html"


def test_report_opens_self_contained_in_chromium(report_page, tmp_path):
    images, problems, text = open_page(report_page.as_uri(), tmp_path / "profile")
    assert problems == []
    assert sorted(i["alt"] for i in images) == sorted(f"{name}.png" for name in FIGURES)
    for image in images:
        assert image["src"] == "data:image/png;base64,", image["alt"]
        assert image["complete"] and image["decoded"], image["alt"]
        assert image["width"] > 100 and image["height"] > 100, image
    assert "reverse_ess" in text and "Backbone basins" in text and "ALA2" in text
    assert "reweighted to the Boltzmann distribution, and the reference" in text


def test_broken_image_is_caught(tmp_path):
    # The check itself: a page whose picture is missing is reported as such.
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><head><meta charset="utf-8"><title>x</title></head>'
                    '<body><img alt="missing.png" src="missing.png"></body></html>')
    images, problems, _ = open_page(page.as_uri(), tmp_path / "profile")
    assert images[0]["width"] == 0 and not images[0]["decoded"]
    assert any("ERR_FILE_NOT_FOUND" in p for p in problems), problems
