"""The web page in headless Chromium (Debian's `chromium`): `onegen api` runs in a thread with the tiny
trained checkpoint, and Chromium, driven over the DevTools protocol (a plain WebSocket: the `websockets`
package the stack installs), loads addresses the page acts on by itself — `/?q=…` asks the question on
load, `/?tab=link&text=…` links the text on load, `&run=0` only fills the box in. Each test waits on the
page's own state (`data-ask-state` / `data-link-state`: idle, running, done, error), never on a clock,
then reads the DOM and takes a screenshot.

(`chromium --dump-dom` / `--screenshot` alone cannot wait for a streamed answer: `--virtual-time-budget`
stops counting a fetch as pending once its headers arrive, and the page is dumped mid-stream.)

Checked: the answer and the retrieved passages (ranks, scores, titles, text: the API's own retrievals for
the question) in the DOM; the highlighted spans of the entity-linking tab with their offsets and
entities; a refused question shown with the field named; no script error; and screenshots that are real
renderings (PNG, size, many colours, the page's accent and highlight colours drawn where they should be
and not where they should not).
"""
from __future__ import annotations

import io
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.browser_cdp import CHROMIUM, HEIGHT, WIDTH, Chromium
from tests.serving.conftest import ARTHUR, OBAMA, one_thread, tiny_params, tiny_project

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")

MARK = (0xFF, 0xE0, 0x8A)  # mark.mention background (webui --mark)
ACCENT = (0x23, 0x57, 0xC6)  # the buttons and the score bars (webui --accent)


# ------------------------------------------------------------------------------------------ chromium

class Browser(Chromium):
    """The page of `onegen api`, opened by address."""

    def open(self, url: str, state: str | None) -> Node:
        """Load `url`; wait until the page has loaded and, if `state` ("ask" / "link") is given, until
        that task has finished (done or error); the DOM then."""
        self.js("window.__previous_page = true")  # gone once the new document has replaced this one
        self.call("Page.navigate", url=url)
        self.until(lambda: self.js("window.__previous_page === undefined && document.readyState === 'complete'"),
                    f"{url} to load")
        assert self.js("location.href") == url
        self.until(lambda: self.js("!document.getElementById('status').textContent.includes('connecting')"),
                    "the page's health check")
        if state:
            self.until(lambda: self.js(f"['done', 'error'].includes(document.body.dataset.{state}State)"),
                        f"the page's {state} to finish")
        tree = _Tree()
        tree.feed(self.js("document.documentElement.outerHTML"))
        return tree.root

    def screenshot(self, out: Path):
        """A PNG of the page, checked to be a real rendering; (image, bytes)."""
        from PIL import Image

        png = self.png()
        out.write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, f"{out}: {len(png)} bytes"
        img = Image.open(io.BytesIO(png)).convert("RGB")
        assert img.size == (WIDTH, HEIGHT)
        colours = img.getcolors(WIDTH * HEIGHT)
        most = max(n for n, _ in colours)
        assert len(colours) > 50 and most < 0.95 * WIDTH * HEIGHT, "the screenshot is (nearly) one colour"
        return img, png


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def walk(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.walk()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [n for n in self.walk() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)]

    def by_id(self, id_: str) -> Node:
        (node,) = [n for n in self.walk() if n.attrs.get("id") == id_]
        return node


class _Tree(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def pixels(img, rgb: tuple[int, int, int]) -> int:
    return sum(n for n, px in img.getcolors(img.width * img.height) if px == rgb)


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(base URL, the service) of a running server with the tiny project."""
    from tasks.serving.app import create_app, serve_in_thread
    from tasks.serving.service import ModelService

    with one_thread():
        paths = tiny_project(tmp_path_factory)
        p = tiny_params(paths)
        service = ModelService(p)
        with serve_in_thread(create_app(service, p.serve)) as url:
            yield url, service


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pytest.importorskip("websockets", reason="the DevTools protocol client (websockets, installed with prefect)")
    pytest.importorskip("PIL", reason="screenshots are read with Pillow (installed with matplotlib)")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture()
def page_errors(browser):
    """Script errors and console.error calls of the test's page loads (none expected)."""
    browser.errors.clear()
    yield browser.errors
    assert browser.errors == [], browser.errors


@pytest.fixture()
def shots(tmp_path) -> Path:
    """Where screenshots go: $ONEGEN_SCREENSHOTS to keep them, else the test's tmp dir."""
    d = Path(os.environ.get("ONEGEN_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _engine(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/v1/health", timeout=30).json()["engine"]


# ------------------------------------------------------------------------------------------ tests

def test_the_page_asks_a_question_and_shows_the_answer_and_the_retrieved_passages(page, browser, shots, page_errors):
    import httpx

    url, service = page
    address = f"{url}/?{urlencode({'q': ARTHUR})}"
    doc = browser.open(address, "ask")
    body = doc.find_all("body")[0]
    error = doc.by_id("error")
    assert body.attrs["data-ask-state"] == "done", error.text
    assert "hidden" in error.attrs
    assert doc.by_id("answer").text == "Arthur's Magazine"
    assert doc.by_id("status").text.startswith(f"checkpoint {service.checkpoint_id}")
    assert doc.by_id("tab-ask").attrs["aria-selected"] == "true" and "hidden" in doc.by_id("panel-link").attrs
    # the generated text as streamed: special tokens marked, each retrieval where it happened
    stream = doc.by_id("stream")
    assert stream.text.startswith("[RQ]→ passage 1[RQ]→ passage 2<FINAL-ANSWER>Arthur's Magazine</FINAL-ANSWER>")
    assert [n.text for n in stream.find_all("span", "tok-special")][:2] == ["[RQ]", "[RQ]"]
    assert len(stream.find_all("span", "hop")) == 2
    meta = doc.by_id("ask-meta").text
    assert "finish: eos" in meta and "2 retrievals" in meta

    # the passages beside it: the API's own retrievals for this question, rank by rank
    api = httpx.post(f"{url}/v1/ask", json={"question": ARTHUR, "top_k": 3}, timeout=60).json()
    groups = doc.by_id("retrievals").find_all("div", "retrieval")
    assert [g.attrs["data-query"] for g in groups] == ["0", "1"]
    assert len(groups) == len(api["retrievals"]) == 2
    for group, expected in zip(groups, api["retrievals"]):
        hits = group.find_all("div", "hit")
        assert len(hits) == len(expected["hits"]) == 3
        assert ["pasted" in h.classes for h in hits] == [True, False, False]  # the top one was pasted
        for h, e in zip(hits, expected["hits"]):
            assert h.find_all(cls="rank")[0].text == f"#{e['rank']}"
            assert h.find_all(cls="title")[0].text == e["title"]
            assert h.find_all(cls="text")[0].text == e["text"]
            assert h.find_all(cls="id")[0].text == e["id"]
            assert float(h.find_all(cls="score")[0].text) == pytest.approx(e["score"], abs=5e-4)
    assert [g.find_all(cls="title")[0].text for g in groups] == ["Arthur's Magazine", "First for Women"]

    img, _ = browser.screenshot(shots / "ask.png")
    assert pixels(img, ACCENT) > 2000  # the Ask button and the score bars are drawn


def test_the_link_tab_highlights_the_linked_spans(page, browser, shots, page_errors):
    url, _ = page
    address = f"{url}/?{urlencode({'tab': 'link', 'text': OBAMA})}"
    doc = browser.open(address, "link")
    body = doc.find_all("body")[0]
    assert body.attrs["data-link-state"] == "done", doc.by_id("error").text
    assert body.attrs["data-ask-state"] == "idle"  # nothing asked
    assert doc.by_id("tab-link").attrs["aria-selected"] == "true"
    assert "hidden" not in doc.by_id("panel-link").attrs and "hidden" in doc.by_id("panel-ask").attrs
    linked = doc.by_id("linked")
    marks = linked.find_all("mark", "mention")
    assert [(m.attrs["data-start"], m.attrs["data-end"], m.attrs["data-entity"], m.children[0]) for m in marks] == \
           [("0", "5", "Q76", "Obama"), ("18", "26", "Q18094", "Honolulu")]
    assert [m.find_all("sup")[0].text for m in marks] == ["Barack Obama", "Honolulu"]
    assert all("unlinked" not in m.classes and m.attrs["title"].startswith(m.find_all("sup")[0].text) for m in marks)
    # the text itself is intact around the highlights (the entity labels are the <sup>s)
    plain = "".join(c if isinstance(c, str) else c.children[0] for c in linked.children)
    assert plain == OBAMA
    rows = doc.by_id("mentions").find_all("tr")[1:]  # after the header row
    assert [[td.text for td in r.find_all("td")][:3] for r in rows] == \
           [["0–5", "Obama", "Barack Obama (Q76)"], ["18–26", "Honolulu", "Honolulu (Q18094)"]]
    assert doc.by_id("link-meta").text.startswith("2 mentions, 2 linked · 1 window(s) · finish: eos")

    img, _ = browser.screenshot(shots / "link.png")
    highlighted = pixels(img, MARK)
    assert highlighted > 1500  # both spans are drawn highlighted
    # the same page with the text only filled in: no request, nothing highlighted
    before = _engine(url)["admitted"]
    doc = browser.open(f"{address}&run=0", None)
    assert doc.find_all("body")[0].attrs["data-link-state"] == "idle" and not doc.by_id("linked").children
    assert browser.js("document.getElementById('link-text').value") == OBAMA
    idle, _ = browser.screenshot(shots / "link-idle.png")
    assert pixels(idle, MARK) == 0 and _engine(url)["admitted"] == before


def test_a_refused_question_is_shown_with_the_field_named(page, browser):
    url, _ = page
    doc = browser.open(f"{url}/?{urlencode({'q': 'Is [RQ] a token?'})}", "ask")
    assert doc.find_all("body")[0].attrs["data-ask-state"] == "error"
    error = doc.by_id("error")
    assert "hidden" not in error.attrs
    assert "special token '[RQ]'" in error.text and error.text.endswith("(question)")
    assert doc.by_id("answer").text == "" and not doc.by_id("retrievals").find_all("div", "retrieval")
