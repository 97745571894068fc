"""The console in a real headless Chromium (Debian's chromium and chromedriver, driven by Selenium): log in,
run a routine and watch its log go live to `succeeded` without reloading, follow its pull request, pause
the routine and see a fire refused, cancel a live run, and read why a delivery matched nothing. Each page
is photographed: into docs/screenshots/ (docs/console.md shows them) when ROUTINES_SCREENSHOTS=docs, else
into the test's temporary folder, so a test run leaves the repository as it was."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.testing.anthropic_server import Script, Turn, bash, edit_create, edit_str_replace, text
from app.testing.github_hooks import deliver
from app.testing.stack import API_TOKEN, Stack, running_stack
from tests.support.paths import PAYLOADS, ROOT

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="apt-get install chromium chromium-driver (scripts/test says so)"
)
DOC_SHOTS = ROOT / "docs" / "screenshots"
SECRET = "test-webhook-secret"
CALC = "def add(a, b):\n    return a - b\n"


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "fix-calc.md").write_text(
        "---\nname: fix-calc\ndescription: Fix the calculator's failing test\nrepo: acme/calc\non:\n  api: true\n"
        "  schedule:\n    - cron: '0 3 * * *'\n      timezone: Europe/Berlin\n---\nFix add. [script:fix]\n"
    )
    (folder / "long-job.md").write_text(
        "---\nname: long-job\nrepo: acme/calc\non:\n  api: true\n---\nWork. [script:long]\n"
    )
    (folder / "triage.md").write_text(
        "---\nname: triage\nrepo: acme/calc\non:\n  github:\n    issues: {types: [labeled], labels: [bug]}\n---\n"
        "Triage the issue.\n"
    )
    source = tmp_path / "calc-src"
    source.mkdir()
    (source / "calc.py").write_text(CALC)
    with running_stack(tmp_path, redis_url, routines_dir=folder, github_webhook_secret=SECRET) as s:
        s.github.add_repo("acme/calc", s.installation, source_dir=source)
        yield s


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chrome'}",
    ):  # fmt: skip
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a browser online
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, condition: object, what: str, timeout_s: float = 60) -> None:
    try:
        # The live log replaces elements as events arrive: an element found a moment ago may be gone.
        stale = [StaleElementReferenceException]
        waiting = WebDriverWait(driver, timeout_s, poll_frequency=0.1, ignored_exceptions=stale)
        waiting.until(condition)  # type: ignore[arg-type]
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "body").text[:2000]
        raise AssertionError(f"gave up waiting for {what}; the page says: {page}") from None


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return DOC_SHOTS if os.environ.get("ROUTINES_SCREENSHOTS") == "docs" else tmp_path / "screenshots"


def shot(driver: WebDriver, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))


def log_in(driver: WebDriver, stack: Stack, shots: Path) -> None:
    driver.get(f"{stack.web_url}/routines")
    assert "/login" in driver.current_url
    shot(driver, shots, "login")
    driver.find_element(By.NAME, "token").send_keys(API_TOKEN)
    driver.find_element(By.CSS_SELECTOR, "section.login button").click()
    wait(driver, lambda d: d.current_url.endswith("/routines"), "the routines page after logging in")


def test_a_day_at_the_console(stack: Stack, chrome: WebDriver, shots: Path) -> None:
    stack.anthropic.add_script(
        Script(
            match="[script:fix]",
            turns=[
                Turn([text("Let me look."), bash("cat calc.py; seq 1 40")]),
                Turn([edit_str_replace("calc.py", "return a - b", "return a + b")], delay_ms=1500),
                Turn([text("Fixed add\n\n`add` subtracted; it adds now.")]),
            ],
        )
    )
    log_in(chrome, stack, shots)
    assert "fix-calc" in chrome.page_source and "triage" in chrome.page_source
    shot(chrome, shots, "routines")

    # Run now, from the routine's page, and watch the log go live without a reload.
    chrome.find_element(By.LINK_TEXT, "fix-calc").click()
    wait(chrome, lambda d: "Next fires" in d.page_source, "the routine page")
    shot(chrome, shots, "routine")
    chrome.find_element(By.NAME, "text").send_keys("The add test fails.")
    chrome.find_element(By.CSS_SELECTOR, "form.fire button").click()
    wait(chrome, lambda d: "/runs/" in d.current_url, "the run page")
    chrome.execute_script("window.sameDocument = true")
    wait(chrome, lambda d: d.find_element(By.ID, "state").text in ("preparing", "running"), "the run to start", 30)
    wait(chrome, lambda d: d.find_elements(By.CSS_SELECTOR, ".ev.tool-result"), "a command's output in the log")
    shot(chrome, shots, "run-live")
    run_id = chrome.current_url.split("/runs/")[1].split("?")[0]
    try:
        wait(chrome, lambda d: d.find_element(By.ID, "state").text == "succeeded", "succeeded, live")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nthe run's events: {[e['type'] for e in stack.events(run_id)]}") from None
    assert chrome.execute_script("return window.sameDocument") is True, "the page was never reloaded"
    wait(chrome, lambda d: d.find_element(By.ID, "pr").text.startswith("#"), "the pull request link")
    log_text = chrome.find_element(By.ID, "log").text
    assert "workspace.checkpoint" in log_text and "model.turn" in log_text
    assert chrome.find_elements(By.CSS_SELECTOR, ".diff .add"), "the checkpoint's diff is rendered"
    assert not chrome.find_element(By.ID, "live-actions").is_displayed(), "a finished run offers no cancel"
    shot(chrome, shots, "run")

    # Follow the pull request to (the test) GitHub.
    chrome.find_element(By.CSS_SELECTOR, "#pr a").click()
    wait(chrome, lambda d: d.find_elements(By.CSS_SELECTOR, "h1.title"), "the pull request page")
    assert "Draft" in chrome.find_element(By.CSS_SELECTOR, "p.state").text
    chrome.back()

    # Pause the routine: a fire is refused, and says so.
    chrome.get(f"{stack.web_url}/routines/fix-calc")
    chrome.find_element(By.CSS_SELECTOR, "button.pause").click()
    wait(chrome, lambda d: "fix-calc is paused" in d.page_source, "the pause to be confirmed")
    assert stack.fire("fix-calc").status_code == 409
    chrome.find_element(By.CSS_SELECTOR, "button.resume").click()
    wait(chrome, lambda d: "fix-calc is active" in d.page_source, "the resume to be confirmed")

    # Cancel a live run.
    stack.anthropic.add_script(
        Script(
            match="[script:long]",
            turns=[Turn([edit_create("PARTIAL.md", "half\n")]), Turn([bash("sleep 0.3; echo working")])],
            loop_last=True,
        )
    )
    chrome.get(f"{stack.web_url}/routines/long-job")
    chrome.find_element(By.CSS_SELECTOR, "form.fire button").click()
    wait(chrome, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".ev.tool-result")) >= 2, "the long job to work")
    chrome.find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait(chrome, lambda d: d.find_element(By.ID, "state").text == "cancelled", "the run to stop")
    wait(chrome, lambda d: d.find_elements(By.ID, "incomplete"), "the partial work to be marked incomplete")
    shot(chrome, shots, "run-cancelled")

    # A delivery that matched nothing, and why.
    data = json.loads((PAYLOADS / "issues.labeled.json").read_text())
    data["repository"]["full_name"], data["repository"]["name"] = "acme/calc", "calc"
    data["installation"] = {"id": stack.installation}
    data["label"]["name"] = "question"
    deliver(stack.github, "issues", data, f"{stack.web_url}/webhooks/github", SECRET)
    deadline = time.monotonic() + 30
    while True:  # the worker handles the delivery in the background; the page shows it once handled
        chrome.get(f"{stack.web_url}/deliveries")
        if "question" in chrome.page_source or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert "no match" in chrome.page_source and "triage" in chrome.page_source
    shot(chrome, shots, "deliveries")

    for page in ("runs", "secrets", "health", ""):
        chrome.get(f"{stack.web_url}/{page}")
        shot(chrome, shots, page or "dashboard")
