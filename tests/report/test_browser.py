"""Open the report in headless Chromium and check that every figure loaded.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them with apt-get) and
selenium (a dev dependency); skipped, with the reason, where they are missing.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BROWSER = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
DRIVER = shutil.which("chromedriver")

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

pytestmark = [
    pytest.mark.skipif(
        BROWSER is None or DRIVER is None,
        reason="chromium and chromedriver not found: `make test` installs the Debian packages chromium "
        "and chromium-driver (apt-get install chromium chromium-driver)",
    ),
    pytest.mark.skipif(not HAVE_SELENIUM, reason="selenium not installed: pip install -e '.[dev]'"),
]

# Per <img>: loaded completely with a decoded width; plus the count the page declares.
_PROBE = """
return {
  images: Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth})),
  declared: document.querySelector('meta[name="pixcon-figures"]').content,
  text: document.getElementById('figure-count').textContent,
  ready: document.readyState,
};
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))  # no Selenium Manager download
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _probe(driver: Any, page: Path) -> dict[str, Any]:
    driver.get(page.resolve().as_uri())  # returns after the load event: every image has loaded or failed
    return driver.execute_script(_PROBE)  # type: ignore[no-any-return]


def test_every_figure_loads_in_chromium(browser: Any, demo_report: Path) -> None:
    result = _probe(browser, demo_report)
    assert result["ready"] == "complete"
    images = result["images"]
    assert len(images) == int(result["declared"]) == 7
    assert re.search(rf"This report has {len(images)} figures", result["text"])
    bad = [i for i, img in enumerate(images) if not (img["complete"] and img["width"] > 0)]
    assert bad == [], f"figures that did not load: {bad}"


def test_the_probe_catches_a_broken_figure(browser: Any, demo_report: Path, tmp_path: Path) -> None:
    page = demo_report.read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    widths = [img["width"] for img in _probe(browser, broken)["images"]]
    assert widths[0] == 0 and all(w > 0 for w in widths[1:])
