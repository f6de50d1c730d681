"""The review page in a real headless Chromium against the real `tunesmith review` server:
a rater votes by clicking and by keys 1-4, a reload continues where they stopped, an answer
holding <script> is shown as text and never runs, and the page works without JavaScript."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from test_review_server import N, SCRIPT, ReviewServer, review_server, write_outputs
from tunesmith.eval.review.store import read_votes

REPO = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1000, "height": 800}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Path, ReviewServer]]:
    run_dir = tmp_path_factory.mktemp("run")
    write_outputs(run_dir)
    with review_server(run_dir, "alice,bob,carol") as server:
        yield run_dir, server


def test_a_rater_votes_by_clicking_and_by_keys_and_a_reload_continues(served, browser):
    from playwright.sync_api import expect

    run_dir, server = served
    url = server.links["alice"]
    page = browser.new_page(viewport=VIEWPORT)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    progress = page.locator("#progress")
    shown: list[int] = []  # the item on screen before each vote
    script_shown_as_text: set[int] = set()  # items whose answer showed the script as text (a reload shows one twice)

    def on_screen(k: int) -> None:
        expect(progress).to_have_text(f"{k} of {N}")
        shown.append(int(page.locator("input[name=item]").get_attribute("value")))
        # The page's source, as a GET to the same link returns it; the token is random text that
        # might spell anything, nothing else may.
        source = httpx.get(url).text.replace(url.rsplit("/", 1)[1], "").lower()
        assert "base" not in source and "tuned" not in source
        answers = page.locator("#text-a").inner_text() + page.locator("#text-b").inner_text()
        if SCRIPT in answers:
            script_shown_as_text.add(shown[-1])

    page.goto(url)
    expect(page.locator("#keys")).to_be_visible()
    on_screen(1)
    page.get_by_role("button", name="A is better").click()
    on_screen(2)
    page.keyboard.press("2")
    on_screen(3)
    page.locator("#comment").fill("")
    page.locator("#comment").press_sequentially("12 sounds right")  # digits typed into a comment are text
    expect(page.locator("#comment")).to_have_value("12 sounds right")
    expect(progress).to_have_text(f"3 of {N}")
    page.locator("#comment").evaluate("box => box.blur()")
    page.keyboard.press("3")
    on_screen(4)
    page.reload()
    on_screen(4)
    assert shown[3] == shown[4]  # the same pair again, not the next one
    shown.pop()
    page.locator("input[name=score][value='4']").check()
    page.get_by_role("button", name="Tie").click()
    on_screen(5)
    page.keyboard.press("4")
    on_screen(6)
    page.get_by_role("button", name="B is better").click()
    expect(progress).to_have_text(f"{N} of {N} done")
    expect(page.locator("#count")).to_have_text(str(N))
    expect(page.get_by_role("heading", name="Thank you, alice!")).to_be_visible()

    assert sorted(shown) == sorted(set(shown)) and len(shown) == N
    assert len(script_shown_as_text) == 1 and dialogs == []
    votes = {v["item"]: v for v in read_votes(run_dir) if v["rater"] == "alice"}
    assert [(votes[item]["choice"], votes[item]["score"], votes[item]["comment"]) for item in shown] == [
        ("A", None, ""), ("B", None, ""), ("tie", None, "12 sounds right"), ("tie", 4, ""), ("both_bad", None, ""),
        ("B", None, "")]
    page.close()


def test_without_javascript_the_buttons_still_vote(served, browser):
    from playwright.sync_api import expect

    run_dir, server = served
    context = browser.new_context(java_script_enabled=False, viewport=VIEWPORT)
    page = context.new_page()
    page.goto(server.links["bob"])
    expect(page.locator("#keys")).to_be_hidden()  # no key hint where keys do nothing
    page.locator("input[name=score][value='2']").check()
    page.locator("#comment").fill("A is closer to our tone")
    page.get_by_role("button", name="B is better").click()
    expect(page.locator("#progress")).to_have_text(f"2 of {N}")
    assert [(v["choice"], v["score"], v["comment"]) for v in read_votes(run_dir) if v["rater"] == "bob"] == [
        ("B", 2, "A is closer to our tone")]
    context.close()


def test_screenshot_of_the_rating_page(served, browser, tmp_path):
    """docs/review.png for the README: TUNESMITH_UPDATE_SCREENSHOTS=1 rewrites it."""
    _, server = served
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(server.links["carol"])
    shot = tmp_path / "review.png"
    page.screenshot(path=str(shot))
    page.close()
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (1000, 800)
    if os.environ.get("TUNESMITH_UPDATE_SCREENSHOTS") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "review.png")
