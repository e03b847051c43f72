"""The web app in a real browser (slow): scripts/webapp.py serves the session's demo store and
checkpoint, Debian's chromium (driven by Playwright) asks a question and opens a failed video.

Chromium comes from `make browser` (scripts/browser.sh; .ci/run runs it). With
CREMA_UPDATE_SCREENSHOTS=1 the screenshots are written to docs/img/ (the README shows them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
OPTIONS = ["left", "right", "up", "down", "it does not move"]


def chromium() -> str | None:
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(demo_run, tmp_path_factory):
    """The app as a user starts it (its own process), on the demo store, with an eval file."""
    if chromium() is None:
        pytest.skip("no chromium: run `make browser` (Debian's chromium; .ci/run does it)")
    tmp, common, env, broken = demo_run
    run_eval(tmp, common, env)
    port = free_port()
    log = open(tmp_path_factory.mktemp("app") / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/webapp.py"), *common, f"app.port={port}",
                             f"app.roots.runs={tmp}/run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc, log)
        yield url, tmp, broken
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_eval(tmp: Path, common: list[str], env: dict) -> None:
    from conftest import run_cli

    if not (tmp / "run" / "eval" / "test.json").exists():
        run_cli(env, "scripts/eval.py", *common, f"run_dir={tmp}/run", "eval.split=test")


def wait_until_up(url: str, proc: subprocess.Popen, log, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"the app exited ({proc.returncode}):\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the app did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(120_000)
        yield pg
        browser.close()


def screenshot(page, name: str, tmp: Path) -> None:
    folder = ROOT / "docs" / "img" if os.environ.get("CREMA_UPDATE_SCREENSHOTS") else tmp
    page.screenshot(path=str(folder / f"app-{name}.png"), full_page=True)


def loaded_images(page, selector: str) -> int:
    return page.eval_on_selector_all(f"{selector} img", "els => els.filter(i => i.complete && i.naturalWidth > 0).length")


def test_ask_shows_answer_scores_contributions_and_previews(served, page):
    url, tmp, broken = served
    test_videos = [q["video"] for q in json.loads((tmp / "data/demo/annotations/test.json").read_text())]
    video = tmp / "data" / "demo" / "videos" / f"{next(v for v in test_videos if v != broken)}.mp4"
    page.goto(url)
    page.set_input_files("#ask-upload input[type=file]", str(video))
    page.fill("#ask-question textarea", "Which direction does the orange circle move?")
    page.fill("#ask-options textarea", "\n".join(OPTIONS))
    page.wait_for_selector("#ask-upload video")  # the upload has landed
    page.click("#ask-go")
    page.wait_for_function("document.querySelector('#ask-answer').innerText.includes('answer:')")
    answer = page.inner_text("#ask-answer")
    assert "error" not in answer and any(f"answer: {o}" in answer for o in OPTIONS), answer
    scores = page.inner_text("#ask-scores")
    assert all(o in scores for o in OPTIONS), scores
    parts = page.inner_text("#ask-parts")
    assert all(f"{m} alone" in parts and f"without {m}" in parts for m in ("rgb", "flow", "audio")), parts
    # 8 stored frames x (rgb, flow) previews, each a real decoded image in the page
    page.wait_for_function("Array.from(document.querySelectorAll('#ask-gallery img'))"
                           ".filter(i => i.complete && i.naturalWidth > 0).length >= 8")
    assert loaded_images(page, "#ask-gallery") >= 8
    screenshot(page, "ask", tmp)


def test_explore_shows_report_and_why_a_video_failed(served, page):
    url, tmp, broken = served
    reason = next(json.loads(line) for line in (tmp / "features/demo/failures.jsonl").read_text().splitlines()
                  if json.loads(line)["video_id"] == broken)["reason"]
    page.goto(url)
    page.get_by_role("tab", name="Explore a store").click()
    page.wait_for_selector("#ex-report table")
    assert "35" in page.inner_text("#ex-report")  # 35 of 36 videos ok
    page.fill("#ex-search textarea", broken)
    page.press("#ex-search textarea", "Enter")
    page.wait_for_function("document.querySelector('#ex-table').innerText.includes('failed')")
    page.fill("#ex-video textarea", broken)
    page.click("#ex-show")
    page.wait_for_function("document.querySelector('#ex-detail').innerText.includes('FAILED')")
    detail = page.inner_text("#ex-detail")
    assert f"{broken}: failed" in detail and "decode" in detail and reason[:40] in detail, (detail, reason)
    screenshot(page, "explore-failed", tmp)


def test_explore_renders_a_videos_modalities_and_its_questions(served, page):
    url, tmp, broken = served
    rows = json.loads((tmp / "run/eval/test.json").read_text())["results"][0]["rows"]
    test_videos = [q["video"] for q in json.loads((tmp / "data/demo/annotations/test.json").read_text())]
    vid = next(v for v in test_videos if v != broken)
    page.goto(url)
    page.get_by_role("tab", name="Explore a store").click()
    page.wait_for_selector("#ex-report table")
    page.fill("#ex-video textarea", vid)
    page.click("#ex-show")
    page.wait_for_function(f"document.querySelector('#ex-detail').innerText.includes('{vid}: ok')")
    stats = page.inner_text("#ex-stats")
    assert all(m in stats for m in ("rgb", "flow", "audio")), stats
    page.wait_for_function("Array.from(document.querySelectorAll('#ex-gallery img'))"
                           ".filter(i => i.complete && i.naturalWidth > 0).length >= 16")
    questions = page.inner_text("#ex-questions")
    mine = [r for r in rows if r["qid"].split("_", 1)[1].rsplit("_", 1)[0] == vid]
    assert mine and all(r["qid"] in questions for r in mine), questions
    screenshot(page, "explore-video", tmp)


def test_the_server_serves_no_file_outside_its_roots(served):
    """Gradio's own file route does not hand out the repository, the store or system files."""
    import urllib.error

    url, tmp, _ = served
    for path in ("/etc/passwd", ROOT / "README.md", tmp / "features" / "demo" / "store.json"):
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10) as r:
                status = r.status
        except urllib.error.HTTPError as err:
            status = err.code
        assert status in (403, 404), (path, status)
