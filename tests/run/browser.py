"""A real browser for the live run page: Debian's chromium driven through chromium-driver
(`make test` installs both when absent), headless, with `--no-sandbox` as root. The driver path
is given through Service, so selenium-manager never runs and nothing is downloaded."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "test-artifacts"   # git-ignored


def chromium():
    """A headless Chromium WebDriver, or pytest.skip when chromium/chromium-driver are absent."""
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_path):
        pytest.skip("chromium and chromium-driver are not installed (make test installs them)")
    os.environ["SE_AVOID_STATS"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1400",
                     "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def screenshot(driver, name: str) -> Path:
    SCREENSHOT_DIR.mkdir(exist_ok=True)
    path = SCREENSHOT_DIR / name
    driver.save_screenshot(str(path))
    return path
