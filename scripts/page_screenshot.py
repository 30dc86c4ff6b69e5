"""Screenshot of the service page after one edit on the embedded model (docs/img/service_page.png).

Needs chromium, chromedriver and selenium. Starts `hyperedit serve` on a fresh ledger in a
temporary directory, asks, edits, and saves the page.

    python scripts/page_screenshot.py docs/img/service_page.png
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

PROMPT, TARGET = "The Eiffel Tower is located in the city of", "Rome"


def main(out: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="page-shot-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = Path(__file__).resolve().parents[1] / "src"
    server = subprocess.Popen([sys.executable, "-m", "hyperedit", "serve", "-w", str(root / "ws"), "--port", str(port),
                               "-q"], env={**os.environ, "PYTHONPATH": str(src)})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get(url)
            driver.find_element(By.ID, "ask-prompt").send_keys("The Statue of Liberty is located in the city of")
            driver.find_element(By.ID, "ask").click()
            driver.find_element(By.ID, "edit-prompt").send_keys(PROMPT)
            driver.find_element(By.ID, "edit-target").send_keys(TARGET)
            driver.find_element(By.ID, "edit").click()
            WebDriverWait(driver, 600).until(EC.text_to_be_present_in_element((By.ID, "edit-status"), "applied"))
            WebDriverWait(driver, 30).until(EC.presence_of_element_located((By.ID, "entry-1")))
            driver.save_screenshot(out)
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
