"""End to end in headless Chromium: ``flexispeech serve`` with the real tiny.en; two tabs
upload a speech fixture each at the same time and each shows its own committed words.

Needs Debian's ``chromium`` and ``chromium-driver`` and PyPI ``selenium`` (the script
``tests/streaming/install_browser.sh`` installs them); skipped cleanly without them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # the real model, decoding every second of audio: ~1 min on 2 cores
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver (install_browser.sh)"
    ),
]
WAIT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """``flexispeech serve`` on a free port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexispeech", "serve", "--port", str(port)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"flexispeech serve did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z ]", "", text.lower()).split()


def test_two_tabs_stream_at_once_with_their_own_transcripts(
    server, browser, assets_dir: Path, transcripts
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from flexispeech.audio import SAMPLE_RATE, load_audio

    files = ("fox.wav", "stella.wav")
    tabs = []
    for name in files:
        if tabs:
            browser.switch_to.new_window("tab")
        browser.get(server)
        browser.find_element(By.ID, "file").send_keys(str(assets_dir / name))
        tabs.append(browser.current_window_handle)
    for tab in tabs:  # start both before either ends: real time, so the two streams overlap
        browser.switch_to.window(tab)
        browser.find_element(By.ID, "start-file").click()
    status = lambda d: d.find_element(By.ID, "status").text  # noqa: E731
    for tab, name in zip(tabs, files):
        browser.switch_to.window(tab)
        WebDriverWait(browser, WAIT_S).until(lambda d: status(d) in ("done", "error"))
        committed = browser.find_element(By.ID, "committed").text
        assert status(browser) == "done", browser.find_element(By.ID, "tentative").text
        assert words(committed) == words(transcripts[name]), name
        assert browser.find_element(By.ID, "rank").text == "base"
        duration = load_audio(assets_dir / name).size / SAMPLE_RATE
        assert float(browser.find_element(By.ID, "audio-s").text) == pytest.approx(duration, abs=0.1)
