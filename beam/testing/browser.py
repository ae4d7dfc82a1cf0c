"""
A real browser for the dashboard's tests (issue 13): headless Chromium from
the system's packages, driven by Selenium through the system's
chromedriver.

Debian's C{chromium} and C{chromium-driver} packages are installed by
L{beam.testing.sysdeps.ensureCommands} when missing (as root on a fresh
CI machine), and Selenium is pointed at both binaries explicitly: Selenium
Manager, which would otherwise look for (and download) a browser and a
driver of its own, never runs, and nothing is fetched at run time.  When
the browser cannot start, L{startBrowser} raises: a suite that needs a
browser fails loudly, it never skips.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from beam.errors import BeamError
from beam.testing.sysdeps import ensureCommands

__all__ = ["BrowserUnavailable", "CHROMEDRIVER", "CHROMIUM", "setColorScheme", "startBrowser"]

#: Debian's browser and driver (packages chromium and chromium-driver).
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: The window every screenshot is taken in.
WINDOW = (1280, 900)


class BrowserUnavailable(BeamError):
    """
    Headless Chromium could not be started.
    """


def startBrowser(logDir: str | os.PathLike[str] | None = None, colorScheme: str = "light") -> Any:
    """
    Start headless Chromium and return its Selenium C{WebDriver}; the
    caller quits it (C{driver.quit()}).

    @param logDir: where chromedriver writes its log (a temporary folder
        when L{None}); the error names it when the start fails.
    @param colorScheme: C{"light"} or C{"dark"}: what the page's
        C{prefers-color-scheme} media query sees, so screenshots do not
        depend on the machine's settings.
    @raise BrowserUnavailable: the packages are missing and could not be
        installed, or the browser did not start.
    """
    ensureCommands({"chromium": "chromium", "chromedriver": "chromium-driver"})
    # Selenium is a test extra: imported here so that importing this
    # module (e.g. to collect the tests) costs nothing.
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise BrowserUnavailable(f"{path} is missing: run `apt-get install -y chromium chromium-driver` as root")
    logDir = Path(logDir) if logDir is not None else Path(tempfile.mkdtemp(prefix="beam-chromedriver-"))
    logDir.mkdir(parents=True, exist_ok=True)
    log = logDir / "chromedriver.log"
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        # Nothing leaves the machine: no sync, no component updates, no
        # first-run pages, no field trials.
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(log))
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except WebDriverException as e:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise BrowserUnavailable(f"headless Chromium did not start: {e.msg}\nchromedriver log {log}:\n{tail}") from e
    driver.set_window_size(*WINDOW)
    setColorScheme(driver, colorScheme)
    return driver


def setColorScheme(driver: Any, colorScheme: str) -> None:
    """
    Make the page's C{prefers-color-scheme} media query see
    C{colorScheme} (C{"light"} or C{"dark"}), through the DevTools
    protocol's media emulation.
    """
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": colorScheme}]}
    )
