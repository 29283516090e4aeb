"""The admin page in a real browser: Debian's headless Chromium, driven by chromedriver.

Opt-in (it needs ``apt-get install chromium chromium-driver`` and the ``browser``
extra): ``pytest --browser tests/browser`` or ``TOLLHOUSE_BROWSER=1``. The browser
signs in through the form, creates a key, and with auto-refresh on sees a request
sent with that key appear on the recent requests page, with its ledger entry; the
usage chart is drawn, and the page's Content-Security-Policy reports nothing.
"""

from __future__ import annotations

import os
import shutil

import httpx
import pytest
import trio

from tests.conftest import ADMIN_TOKEN, running_gateway

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("TOLLHOUSE_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TOLLHOUSE_CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
WAIT_S = 20  # the browser's own waits; the whole test has its trio deadline


def open_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def drive(base: str) -> dict:
    """Everything the browser does, in one thread (selenium blocks)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    seen: dict = {}
    driver = open_browser()
    try:
        wait = WebDriverWait(driver, WAIT_S)
        driver.get(f"{base}/admin/ui/actors")
        wait.until(ready.url_contains("/admin/ui/login"))  # no session yet: sent to the form
        driver.find_element(By.NAME, "token").send_keys(ADMIN_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait.until(ready.presence_of_element_located((By.ID, "actors")))
        seen["cookie"] = driver.get_cookie("th_session")
        seen["url_after_sign_in"] = driver.current_url

        driver.find_element(By.LINK_TEXT, "Keys").click()
        form = wait.until(ready.presence_of_element_located((By.ID, "create-key")))
        form.find_element(By.NAME, "name").send_keys("browser-key")
        form.find_element(By.NAME, "credit_usd").send_keys("3.00")
        form.find_element(By.CSS_SELECTOR, "button").click()
        secret = wait.until(ready.presence_of_element_located((By.ID, "created-secret"))).text

        driver.find_element(By.LINK_TEXT, "Requests").click()
        wait.until(ready.presence_of_element_located((By.ID, "content")))
        driver.find_element(By.ID, "auto-refresh").click()  # the page refreshes itself from now on
        with httpx.Client(base_url=base, timeout=30) as client:
            r = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                            json={"model": "demo", "messages": [{"role": "user", "content": "from the browser"}]})
        seen["status"], seen["request_id"] = r.status_code, r.headers["x-request-id"]
        link = wait.until(ready.presence_of_element_located((By.LINK_TEXT, seen["request_id"])))
        seen["row"] = link.find_element(By.XPATH, "./ancestor::tr").text
        link.click()
        entries = wait.until(ready.presence_of_element_located((By.ID, "entries")))
        seen["entries"] = entries.text

        driver.find_element(By.LINK_TEXT, "Usage").click()
        wait.until(lambda d: d.find_element(By.ID, "usage-chart").get_attribute("data-drawn"))
        seen["chart_series"] = driver.find_element(By.ID, "usage-chart").get_attribute("data-drawn")

        driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
        wait.until(ready.url_contains("/admin/ui/login"))
        driver.get(f"{base}/admin/ui/keys")
        seen["after_sign_out"] = driver.current_url
        seen["console"] = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        seen["secret"] = secret
    finally:
        driver.quit()
    return seen


async def test_sign_in_create_a_key_and_see_its_request_appear(config_doc):
    with trio.fail_after(180):
        async with running_gateway(config_doc) as gw:
            seen = await trio.to_thread.run_sync(drive, gw.url, limiter=trio.CapacityLimiter(1),
                                                 abandon_on_cancel=True)
            [entry] = [e for e in gw.ledger_entries() if e["request_id"] == seen["request_id"]]
    cookie = seen["cookie"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    assert ADMIN_TOKEN not in seen["url_after_sign_in"] and seen["url_after_sign_in"].endswith("/admin/ui/actors")
    assert seen["secret"].startswith("th-") and seen["status"] == 200
    assert "browser-key" in seen["row"] and "sim/sim-chat" in seen["row"]
    assert f"{entry['amount_micro'] / 1e6:.6f}" in seen["row"]
    assert f"amount_micro {entry['amount_micro']}" in seen["entries"]
    assert seen["chart_series"] == "1"
    assert seen["after_sign_out"].endswith("/admin/ui/login")
    assert seen["console"] == []  # no CSP violation, no script error
