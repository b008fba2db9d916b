"""The privacy centre in a real browser (Debian's chromium, driven by Playwright), against a
real server on loopback: submit, verify, follow, download; with the keyboard only."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from siloguard.api.app import create_app
from siloguard.dsr.notifier import read_outbox
from tests.api.conftest import Api, build_api
from tests.dsr.helpers import STORES, SUBJECT
from tests.storage.databases import fresh_database

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):  # CI installs it (.ci/run): a missing browser there is a failure, not a skip
        raise RuntimeError("chromium is not installed; .ci/run installs Debian's chromium for the browser tests")
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@dataclass
class Live:
    api: Api
    base: str

    def code(self, request_id: str) -> str:
        return self.api.code(request_id)

    def sync(self) -> None:
        """Each store does its tasks, over HTTP with its own key (siloguard store sync)."""
        from siloguard.dsr.sync import sync_store

        for store in STORES:
            with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.api.keys[f'store_{store}']}"}) as client:
                sync_store(client, self.api.env.settings, store)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with fresh_database("sqlite", tmp_path) as url:
        for api in build_api(tmp_path, url):  # keys and stores as the API tests have them; the app served for real
            app = create_app(api.env.settings, service=api.app_service())
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))  # bound and listening before the browser connects: no wait for start-up
            sock.listen(64)
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            try:
                yield Live(api, f"http://127.0.0.1:{sock.getsockname()[1]}")
            finally:
                server.should_exit = True
                thread.join(timeout=30)
                sock.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(accept_downloads=True)
        tab = context.new_page()
        outside: list[str] = []
        tab.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "blob:", "data:", "about:")) else None)
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        failed_loads: list[str] = []
        tab.on("console", lambda m: failed_loads.append(m.text) if m.type == "error" else None)
        tab.failed_loads = failed_loads  # an API refusal shows here too: the tests that expect none say so
        try:
            yield tab
        finally:
            browser.close()
        assert outside == [], f"the page loaded from elsewhere: {outside}"
        assert errors == [], f"script errors in the page: {errors}"


def _outbox_request(live: Live) -> str:
    messages = read_outbox(live.api.engine)
    assert messages, "a code was queued"
    return str(messages[-1]["request_id"])


def test_a_subject_gets_their_data_with_the_keyboard_only(live: Live, page: object, tmp_path: Path) -> None:
    tab = page  # type: ignore[assignment]
    tab.goto(live.base + "/")
    # Skip link first, then the form; everything by Tab, typing and Enter/Space.
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.textContent") == "Skip to the form"
    tab.keyboard.press("Enter")
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.id") == "kind-access"  # the checked radio of the group
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.id") == "customer"
    tab.keyboard.type(SUBJECT)
    tab.keyboard.press("Tab")  # no e-mail field: the code goes to the address the stores hold
    assert tab.evaluate("document.activeElement.textContent") == "Send the request"
    tab.keyboard.press("Enter")

    tab.wait_for_selector("#step-verify:not([hidden])")
    assert tab.evaluate("document.activeElement.id") == "verify-title"  # focus moved to the next step
    request_id = tab.inner_text("#request-id")
    assert request_id == _outbox_request(live)
    assert "received" in tab.inner_text("#status") and "due by" in tab.inner_text("#status")
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.id") == "code"
    tab.keyboard.type(live.code(request_id))
    tab.keyboard.press("Enter")

    tab.wait_for_selector("#step-track:not([hidden])")
    assert tab.inner_text("#track-id") == request_id
    due = live.api.app_service().get(request_id)["due_at"]
    assert due.strftime("%Y-%m-%d") in tab.inner_text("#track-due")  # the API's own deadline

    live.sync()  # the stores answer
    tab.focus("#refresh")
    tab.keyboard.press("Enter")
    tab.wait_for_selector("#download:not([hidden])")
    assert tab.inner_text("#track-status") == "done"
    tab.focus("#fetch-answer")
    tab.keyboard.press("Enter")
    tab.wait_for_selector("#saved:not([hidden])")
    assert tab.evaluate("document.activeElement.id") == "save-html"

    frame = tab.frame_locator("#answer-view")
    assert frame.locator("#customer-number").inner_text() == SUBJECT
    assert "Your rights" in frame.locator("body").inner_text()

    with tab.expect_download() as saving:
        tab.keyboard.press("Tab")  # to "Save the machine-readable copy (JSON)"
        tab.keyboard.press("Enter")
    saved = tmp_path / "answer.json"
    saving.value.save_as(saved)
    data = json.loads(saved.read_text())
    assert data["request"] == request_id and data["answer"]["subject"]["customer_number"] == SUBJECT
    assert {s["store"] for s in data["answer"]["stores"]} == set(STORES)
    with tab.expect_download() as saving:
        tab.click("#save-html")
    assert saving.value.suggested_filename == f"my-data-{request_id}.html"

    tab.screenshot(path=str(tmp_path / "centre.png"), full_page=True)  # for a look by eye in development
    assert (tmp_path / "centre.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tab.failed_loads == []  # type: ignore[attr-defined]  nothing missing, nothing refused
    # The service kept no copy.
    assert live.api.app_service().take_answer(request_id) is None


def test_wrong_input_is_explained_on_the_page(live: Live, page: object) -> None:
    tab = page  # type: ignore[assignment]
    tab.goto(live.base + "/")
    tab.click("text=Send the request")
    assert "customer number" in tab.inner_text("#problem")
    tab.check("#kind-consent")
    tab.fill("#customer", SUBJECT)
    tab.click("text=Send the request")
    assert "at least one consent" in tab.inner_text("#problem")
    tab.select_option("select[data-purpose='personalize.profiling']", "withdraw")
    tab.click("text=Send the request")
    tab.wait_for_selector("#step-verify:not([hidden])")
    tab.fill("#code", "00000000")
    tab.click("text=Verify")
    tab.wait_for_selector("#problem:not(:empty)")
    assert "The code was not accepted" in tab.inner_text("#problem")
    assert tab.evaluate("document.getElementById('step-track').hidden")  # no further without the code
