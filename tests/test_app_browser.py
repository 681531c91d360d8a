"""The app in a real browser (Debian's chromium driven by Python playwright, headless): drop an
image into the chat, ask, watch the answer stream, switch tabs, upload a bad file and read the
error, stop an answer. Screenshots go to test-output/browser/.

Needs ``apt-get install chromium`` and ``pip install playwright`` (no ``playwright install``:
the system chromium is launched by its path, CHROMIUM=/path overrides it). Skipped, with the
reason, when either is missing.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_app_client import serve
from test_app_handlers import EXAMPLES, ROOT

from imagebind_llm.app.handlers import configure_pipeline

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
OUT = ROOT / "test-output" / "browser"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-extensions", "--no-first-run", "--mute-audio"]

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM=/path)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

# Drop a file on an element the way a browser does: dragenter, dragover, drop with a DataTransfer.
DROP = """([selector, name, mime, b64]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type: mime}));
  const target = document.querySelector(selector);
  for (const type of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
  }
}"""
# Record every text the last answer bubble shows (a stream shows several).
WATCH = """() => {
  window.__answers = [];
  const record = () => {
    const bots = document.querySelectorAll('[data-testid="bot"]');
    const text = bots.length ? bots[bots.length - 1].innerText : null;
    if (text && window.__answers[window.__answers.length - 1] !== text) window.__answers.push(text);
  };
  new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
# The new answer (number `count`) is complete: it is there, and the input box is free again
# (it is locked from the moment the question is shown until the answer is complete).
ANSWERED = """(count) => {
  const bots = document.querySelectorAll('[data-testid="bot"]');
  const box = document.querySelector('#chat-input textarea');
  const last = bots.length ? bots[bots.length - 1].innerText.trim() : "";
  return bots.length === count && last !== "…" && !last.startsWith("⏳") && !box.disabled;
}"""
BOX = "#chat-input textarea"


@pytest.fixture(scope="module")
def pipeline():
    from imagebind_llm.presets import build_untrained_pipeline

    # The model `python app.py` starts with, so that the screenshots show what a user sees.
    return configure_pipeline(build_untrained_pipeline())


@pytest.fixture(scope="module")
def url(pipeline):
    with serve(pipeline) as local_url:
        yield local_url


@pytest.fixture(scope="module")
def page(url, tmp_path_factory):
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(url, wait_until="load")
        page.wait_for_selector(BOX)
        yield page
        context.close()


@contextmanager
def slow(pipeline, seconds_per_token: float = 0.02):
    """Make the tiny model answer at a human pace (it answers in a blink), so that a stream can be
    watched and stopped."""
    fast = pipeline.stream_ids

    def paced(*args, **kwargs):
        for token in fast(*args, **kwargs):
            time.sleep(seconds_per_token)
            yield token

    pipeline.stream_ids = paced
    try:
        yield
    finally:
        pipeline.stream_ids = fast


def drop(page, selector: str, path: Path | None = None, *, name: str | None = None, data: bytes | None = None,
         mime: str = "application/octet-stream"):
    data = path.read_bytes() if data is None else data
    page.evaluate(DROP, [selector, name or path.name, mime, base64.b64encode(data).decode()])


def answers(page) -> int:
    return page.locator('[data-testid="bot"]').count()


def test_page_header_says_the_model_is_untrained(page):
    header = page.locator("#header").inner_text()
    assert "ImageBind-LLM" in header and "Untrained model: the answers are noise" in header


def test_drop_an_image_ask_and_see_the_answer_stream(page, pipeline):
    drop(page, BOX, EXAMPLES / "sunset.png", mime="image/png")
    page.wait_for_selector("#chat-input img")  # the dropped image shows in the box
    page.fill(BOX, "What is happening in this picture?")
    page.evaluate(WATCH)
    count = answers(page)
    with slow(pipeline):
        page.press(BOX, "Enter")
        page.wait_for_function(ANSWERED, arg=count + 1)
    texts = [t for t in page.evaluate("window.__answers") if t.strip() not in ("", "…") and not t.startswith("⏳")]
    assert len(texts) >= 3, f"expected a streamed answer, saw {texts}"
    assert len(texts[-1]) > len(texts[0])  # the answer grows in place (markdown may reflow on the way)
    assert "What is happening in this picture?" in page.locator('[data-testid="user"]').first.inner_text()
    assert page.locator('[role="log"] img').count() >= 1  # the image is shown inline in the history
    assert page.input_value(BOX) == ""  # the box is cleared for the next question
    page.locator("#header").scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "chat.png"))


def test_switch_tabs(page):
    checks = {"Image": "Image", "Audio": "Audio", "Video": "Video", "3D": "Point cloud or mesh",
              "Embedding arithmetic": "Texts, one per line"}
    for tab, label in checks.items():
        page.get_by_role("tab", name=tab).click()
        page.get_by_text(label, exact=True).locator("visible=true").first.wait_for()
    # 3D: a mesh example opens in the interactive 3D viewer, a point cloud as a plot.
    page.get_by_role("tab", name="3D").click()
    page.get_by_text("torus.glb").locator("visible=true").first.click()
    page.locator('[data-testid="model3d"] canvas').locator("visible=true").first.wait_for()
    page.wait_for_timeout(2000)  # the viewer loads the mesh after it has its canvas
    page.screenshot(path=str(OUT / "3d-mesh.png"), full_page=True)
    page.get_by_text("sphere_points.npy").locator("visible=true").first.click()
    page.locator(".js-plotly-plot").locator("visible=true").first.wait_for()
    page.screenshot(path=str(OUT / "3d-cloud.png"), full_page=True)
    # Arithmetic: an example gives one weight slider per input, then the tables.
    page.get_by_role("tab", name="Embedding arithmetic").click()
    page.get_by_text("a house in winter").locator("visible=true").first.click()
    page.get_by_label('3. "a house in summer"').locator("visible=true").first.wait_for()
    page.get_by_role("button", name="Mix and ask").click()
    page.wait_for_function("() => Array.from(document.querySelectorAll('table'))"
                           ".some(t => t.innerText.includes('a house in summer'))")
    page.screenshot(path=str(OUT / "mix.png"), full_page=True)



def test_typed_weights_are_shown_as_typed_and_extra_ones_reported(page):
    """The weights pair with the inputs in order: when more are typed than there are inputs
    (an input removed after its weight was typed), the page says which ones were not used."""
    page.get_by_role("tab", name="Embedding arithmetic").click()
    example = page.locator("tr").filter(has_text="house.png").filter(has_text="a house in winter")
    example.locator("visible=true").first.click()  # the example's row (the tables may hold its texts too)
    page.get_by_label('3. "a house in summer"').locator("visible=true").first.wait_for()
    weights = page.get_by_label("Weights, in input order (files, then texts)")
    weights.fill("1.5, 0.6, -0.6, 0.25")
    weights.blur()
    # A weight outside [-1, 1] widens its slider instead of being shown (and later written) as 1.
    first = page.get_by_label("1. house.png").locator("visible=true")
    page.wait_for_function("() => Array.from(document.querySelectorAll('input[type=range]'))"
                           ".some(s => s.max === '1.5' && s.value === '1.5')")
    assert first.first.input_value() == "1.5"
    page.get_by_role("button", name="Mix and ask").click()
    toast = page.locator(".toast-body.warning")
    toast.first.wait_for()
    assert "4 weights for 3 inputs" in toast.first.inner_text() and "(0.25) was not used" in toast.first.inner_text()
    assert weights.input_value() == "1.5, 0.6, -0.6, 0.25"  # what was typed stays as typed

def test_the_weight_sliders_show_the_box_and_move_it(page):
    """An example's weights appear on its sliders (also for an example of files only, whose
    sliders are drawn before its weights arrive), a slider dragged with the mouse rewrites the
    weights box, and a weight typed afterwards moves the slider."""
    page.get_by_role("tab", name="Embedding arithmetic").click()
    example = page.locator("tr").filter(has_text="sunset.png").filter(has_text="birdsong.wav")
    example.locator("visible=true").first.click()
    page.get_by_label("2. birdsong.wav").locator("visible=true").first.wait_for()
    visible_sliders = ("() => Array.from(document.querySelectorAll('input[type=range]'))"
                       ".filter(s => s.offsetParent).map(s => [s.value, s.disabled])")
    page.wait_for_function(f"() => JSON.stringify(({visible_sliders})()) === "
                           "JSON.stringify([['1', false], ['0.5', false]])")
    weights = page.get_by_label("Weights, in input order (files, then texts)")
    assert weights.input_value() == "1, 0.5"
    slider = page.locator("input[type=range]").locator("visible=true").first  # sunset.png's
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.95, middle)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, middle, steps=5)  # the middle of -1 .. 1
    page.mouse.up()
    sync_api.expect(weights).to_have_value("0, 0.5")
    # A weight typed after the drag moves the dragged slider too (the box stays the truth).
    weights.fill("0.7, 0.5")
    weights.blur()
    sync_api.expect(slider).to_have_value("0.7")


def test_a_bad_file_gets_a_readable_error_and_the_text_stays(page):
    page.get_by_role("tab", name="Chat").click()
    drop(page, BOX, name="notes.txt", data=b"my notes", mime="text/plain")
    page.fill(BOX, "Please read my notes")
    count = answers(page)
    page.press(BOX, "Enter")
    toast = page.locator(".toast-body.error")
    toast.first.wait_for()
    message = toast.first.inner_text()
    assert "notes.txt: unsupported file type .txt" in message and "Accepted: images" in message
    assert "Traceback" not in page.content()
    assert page.input_value(BOX) == "Please read my notes"  # nothing typed is lost
    assert answers(page) == count  # and nothing was sent
    page.wait_for_timeout(800)  # the toast slides in
    page.screenshot(path=str(OUT / "error.png"))
    # The page still works: remove the file and send again.
    page.locator("#chat-input").get_by_role("button", name="Remove").first.click()
    page.press(BOX, "Enter")
    page.wait_for_function(ANSWERED, arg=count + 1)


def test_stop_keeps_the_words_so_far(page, pipeline):
    count = answers(page)
    with slow(pipeline, 0.03):
        page.fill(BOX, "Tell me a long story")
        page.press(BOX, "Enter")
        page.wait_for_function(f"""() => {{  // the new answer has begun
            const bots = document.querySelectorAll('[data-testid="bot"]');
            const last = bots.length ? bots[bots.length - 1].innerText : "";
            return bots.length === {count + 1} && last.length > 10 && !last.startsWith("⏳"); }}""")
        page.get_by_role("button", name="Stop").locator("visible=true").first.click()
        deadline = time.time() + 5
        while time.time() < deadline and any(t.name == "imagebind-llm-request" for t in threading.enumerate()):
            time.sleep(0.05)
        assert not any(t.name == "imagebind-llm-request" for t in threading.enumerate()), "generation went on"
    page.wait_for_function(ANSWERED, arg=count + 1)
    bot = page.locator('[data-testid="bot"]').last
    stopped = bot.inner_text()
    page.wait_for_timeout(1000)
    assert bot.inner_text() == stopped and len(stopped) > 10  # the words so far stay, no more come


def test_clear_and_undo_during_an_answer_stop_it(page, pipeline):
    """Clear while an answer streams empties the chat for good (the answer went on and the next
    question joined the old chat); Undo stops it and gives the question back in an editable box."""
    page.get_by_role("tab", name="Chat").click()
    users = "() => Array.from(document.querySelectorAll('[data-testid=\"user\"]')).map(u => u.innerText.trim())"

    def ask_slowly(question: str, count: int):
        page.fill(BOX, question)
        page.press(BOX, "Enter")
        page.wait_for_function(f"""() => {{  // the answer has begun
            const bots = document.querySelectorAll('[data-testid="bot"]');
            const last = bots.length ? bots[bots.length - 1].innerText : "";
            return bots.length === {count} && last.length > 10 && !last.startsWith("⏳"); }}""")

    def no_generation_left():
        deadline = time.time() + 5
        while time.time() < deadline and any(t.name == "imagebind-llm-request" for t in threading.enumerate()):
            time.sleep(0.05)
        return not any(t.name == "imagebind-llm-request" for t in threading.enumerate())

    page.get_by_role("button", name="🗑️ Clear").click()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=\"bot\"]').length === 0")
    with slow(pipeline, 0.05):
        ask_slowly("Tell me a long story", 1)
        page.get_by_role("button", name="🗑️ Clear").click()
        assert no_generation_left(), "the answer went on after Clear"
    page.wait_for_timeout(1000)
    assert page.evaluate(users) == [] and answers(page) == 0  # and nothing of the old chat came back
    page.fill(BOX, "A new conversation")
    page.press(BOX, "Enter")
    page.wait_for_function(ANSWERED, arg=1)
    assert page.evaluate(users) == ["A new conversation"]

    with slow(pipeline, 0.05):
        ask_slowly("Take this back", 2)
        page.get_by_role("button", name="↩️ Undo").click()
        assert no_generation_left(), "the answer went on after Undo"
    sync_api.expect(page.locator(BOX)).to_have_value("Take this back")
    page.wait_for_timeout(1000)
    assert page.input_value(BOX) == "Take this back" and page.locator(BOX).is_enabled()
    assert page.evaluate(users) == ["A new conversation"] and answers(page) == 1
