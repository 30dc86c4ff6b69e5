"""The service's page, driven in a real headless Chromium: ask, edit, compare, revert.

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and the
``selenium`` package; without them the test is skipped and says which one is missing. With
``HYPEREDIT_PAGE_SCREENSHOT=FILE`` it saves the page after the edit there (docs/img/service_page.png).
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="headless browser test needs chromium and chromedriver on PATH "
                                       "(Debian: apt-get install chromium chromium-driver)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from hyperedit.ledger import Ledger  # noqa: E402
from hyperedit.models import load_model  # noqa: E402
from hyperedit.service import Engine, ServiceConfig, create_app  # noqa: E402

FT = {"layers": [2, 3], "steps": 6, "lr": 5e-2, "max_rel_norm": 5.0}
PROMPT = "the eiffel tower is located in the city of"


@pytest.fixture
def served(tiny_dirs, tmp_path):
    import uvicorn

    engine = Engine(load_model(str(tiny_dirs["llama"])), Ledger(tmp_path / "ws"),
                    ServiceConfig(editor_options=FT, batch_window_s=0.0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", engine
    server.should_exit = True
    thread.join(10)
    engine.close()


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_page_asks_edits_compares_and_reverts(served, browser, tmp_path):
    url, engine = served
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    before = engine.complete(PROMPT, 8).text.strip()

    browser.find_element(By.ID, "ask-prompt").send_keys(PROMPT)
    browser.find_element(By.ID, "ask").click()
    wait.until(lambda d: d.find_element(By.ID, "ask-answer").text.strip())
    assert browser.find_element(By.ID, "ask-answer").text.strip() == before

    browser.find_element(By.ID, "edit-prompt").send_keys(PROMPT)
    browser.find_element(By.ID, "edit-target").send_keys("rome")
    browser.find_element(By.ID, "edit").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "edit-status"), "applied as ledger entry 1"))
    assert browser.find_element(By.ID, "before").text.strip() == before
    after = browser.find_element(By.ID, "after").text.strip()
    assert after.split()[0] == "rome" and after != before
    row = wait.until(EC.presence_of_element_located((By.ID, "entry-1")))
    assert "active" in row.text and PROMPT in row.text
    browser.set_window_size(1100, 1000)
    browser.save_screenshot(os.environ.get("HYPEREDIT_PAGE_SCREENSHOT") or str(tmp_path / "page.png"))

    row.find_element(By.CLASS_NAME, "revert").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "entry-1"), "reverted"))
    assert engine.active == ()
    assert engine.complete(PROMPT, 8).text.strip() == before
