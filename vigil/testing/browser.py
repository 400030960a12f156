"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium, for
the console's browser tests and ``bench.console``.

The browser is never downloaded: the Debian packages are installed with ``apt-get`` when
missing and allowed (root), else the start fails with the command to run. A missing browser
is an error, never a skip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from vigil.stack.provision import debian_program

__all__ = ["chromium", "ensure_browser"]


def ensure_browser(install: bool = True) -> tuple[str, str]:
    """Paths of ``chromium`` and ``chromedriver``, installed from Debian when missing.

    Raises:
        StackError: Missing and not installable here (the message says how).
    """
    return (
        debian_program("chromium", "chromium", install=install),
        debian_program("chromedriver", "chromium-driver", install=install),
    )


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 800) -> Iterator[webdriver.Chrome]:
    """A headless Chromium window of ``width`` x ``height`` CSS pixels."""
    browser, driver = ensure_browser()
    options = Options()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        chrome.set_window_size(width, height)
        # The window includes the browser's own frame: grow it until the page itself
        # (the viewport) is width x height.
        inner_w, inner_h = chrome.execute_script("return [innerWidth, innerHeight]")
        chrome.set_window_size(2 * width - inner_w, 2 * height - inner_h)
        yield chrome
    finally:
        chrome.quit()
