"""The web page in a real browser: headless Chromium (Debian's `chromium`) drives `onegen api`'s page on a
running server with the tiny trained checkpoint, over the DevTools protocol. It types a question, clicks
Ask, waits for the stream to finish and checks the DOM (the answer, the retrieved passages with scores);
then links a sentence on the entity-linking tab and checks the highlighted spans; each step is also
checked on a screenshot (size, not blank, the page's highlight colours present)."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from tests.browser_cdp import CHROMIUM, Chromium
from tests.serving.conftest import ARTHUR, OBAMA, one_thread, tiny_params, tiny_project

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]
MARK = (0xFF, 0xE0, 0x8A)  # mark.mention background (webui --mark)
ACCENT = (0x23, 0x57, 0xC6)  # buttons and score bars (webui --accent)


class Browser(Chromium):
    """The page driven as a user would: typing, clicking, waiting."""

    def wait(self, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)

    def type_into(self, element_id: str, text: str) -> None:
        self.js(f"document.getElementById({element_id!r}).focus()")
        self.call("Input.insertText", text=text)  # as keyboard input: the page sees real input events

    def click(self, element_id: str) -> None:
        box = self.js(f"(() => {{ const r = document.getElementById({element_id!r}).getBoundingClientRect(); "
                      f"return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self):
        from PIL import Image

        png = self.png()
        return Image.open(io.BytesIO(png)).convert("RGB"), png


def _has_colour(img, rgb: tuple[int, int, int], at_least: int) -> bool:
    return sum(c for c, px in img.getcolors(img.width * img.height) if px == rgb) >= at_least


@pytest.fixture()
def page_server(tmp_path_factory):
    from tasks.serving.app import create_app, serve_in_thread
    from tasks.serving.service import ModelService

    with one_thread():
        paths = tiny_project(tmp_path_factory)
        p = tiny_params(paths)
        with serve_in_thread(create_app(ModelService(p), p.serve)) as url:
            yield url


def test_the_page_streams_an_answer_with_its_passages_and_highlights_linked_spans(page_server, tmp_path):
    pytest.importorskip("websockets")
    pytest.importorskip("PIL")
    shots = Path(os.environ.get("ONEGEN_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    (tmp_path / "profile").mkdir()
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=f"{page_server}/")
        browser.wait("document.readyState === 'complete' && document.getElementById('status').textContent.includes('checkpoint')")

        browser.type_into("question", ARTHUR)
        browser.click("ask-btn")
        browser.wait("document.body.dataset.askState !== 'idle' && document.body.dataset.askState !== 'running'")
        assert browser.js("document.body.dataset.askState") == "done", browser.js("document.getElementById('error').textContent")
        assert browser.js("document.getElementById('answer').textContent") == "Arthur's Magazine"
        stream = browser.js("document.getElementById('stream').textContent")
        assert stream.startswith("[RQ]→ passage 1[RQ]→ passage 2<FINAL-ANSWER>Arthur's Magazine</FINAL-ANSWER>")
        groups = browser.js("[...document.querySelectorAll('.retrieval')].map(g => [...g.querySelectorAll('.hit')]"
                            ".map(h => [h.querySelector('.rank').textContent, h.querySelector('.score').textContent, "
                            "h.querySelector('.title').textContent]))")
        assert len(groups) == 2 and [len(g) for g in groups] == [3, 3]
        assert [g[0][2] for g in groups] == ["Arthur's Magazine", "First for Women"]
        assert all(rank == f"#{k + 1}" and -1 <= float(score) <= 1 for g in groups for k, (rank, score, _) in enumerate(g))
        assert "finish: eos" in browser.js("document.getElementById('ask-meta').textContent")
        img, png = browser.screenshot()
        (shots / "ask.png").write_bytes(png)
        assert img.width == 1280 and len(img.getcolors(img.width * img.height)) > 50  # rendered, not blank
        assert _has_colour(img, ACCENT, 2000)  # the Ask button and the score bars

        browser.click("tab-link")
        assert browser.js("document.getElementById('panel-link').hidden") is False
        browser.type_into("link-text", OBAMA)
        browser.click("link-btn")
        browser.wait("['done', 'error'].includes(document.body.dataset.linkState)")
        assert browser.js("document.body.dataset.linkState") == "done", browser.js("document.getElementById('error').textContent")
        marks = browser.js("[...document.querySelectorAll('#linked mark.mention')].map(m => "
                           "[m.dataset.start, m.dataset.end, m.dataset.entity, m.firstChild.textContent])")
        assert marks == [["0", "5", "Q76", "Obama"], ["18", "26", "Q18094", "Honolulu"]]
        assert browser.js("document.querySelectorAll('#mentions tbody tr').length") == 2
        img, png = browser.screenshot()
        (shots / "link.png").write_bytes(png)
        assert _has_colour(img, MARK, 1500)  # both highlighted spans are drawn
        assert browser.errors == []
    finally:
        browser.close()
