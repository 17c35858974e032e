"""A Superset dashboard as a person sees it: headless Chromium, driven by
Selenium through Debian's chromedriver, logs in with the login form, opens the
dashboard, waits until every chart has finished loading, reads each chart's
state from the DOM and saves a screenshot of the whole dashboard.

Superset marks each chart on a dashboard with `data-test="chart-grid-component"`
and `data-test-chart-name`; a chart still loading holds a `.loading` spinner, a
failed query renders an error alert (`role="alert"`), an empty result the
"No results were returned for this query" empty state (an `.ant-empty`
picture beside those words), and a
drawn chart a canvas or SVG (ECharts) or table body rows (table charts).

`chart_verdicts` judges those states and is what tests/test_superset_browser.py
covers; Selenium is imported only where a browser is driven, so the module
loads in the ops venv without it.
"""

from __future__ import annotations

import base64
import io
import pathlib
import time
from dataclasses import dataclass

# The flags a CI machine needs: no sandbox (root in a container), no GPU, and
# nothing that talks to the network or updates itself behind the check's back.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH = 1400

# One entry per chart on the page; evaluated in the page by Selenium.
PROBE_JS = """
return Array.from(document.querySelectorAll('[data-test="chart-grid-component"]')).map(el => {
  const texts = sel => Array.from(el.querySelectorAll(sel)).map(e => e.innerText.trim() || sel);
  // The empty state's picture is an `.ant-empty`; its words sit beside it.
  const empty = el.querySelector('.ant-empty, [aria-label="empty"]');
  const slice = el.querySelector('.slice_container');
  return {
    name: el.getAttribute('data-test-chart-name') || '',
    viz: el.getAttribute('data-test-viz-type') || '',
    loading: el.querySelectorAll('.loading, [data-test="loading-indicator"]').length,
    errors: texts('[role="alert"], .ant-alert-error'),
    empty: empty ? [((slice && slice.innerText) || '').trim().replace(/\\s+/g, ' ') || 'empty state'] : [],
    drawn: el.querySelectorAll('.slice_container canvas, .slice_container table tbody tr, '
      + '.slice_container svg:not(thead svg):not(.ant-empty svg)').length,
  };
});
"""


@dataclass
class Verdict:
    done: bool  # every chart reached a final state (drawn, error or empty)
    failures: list[str]  # one line per chart that is broken, naming it
    outcomes: dict[str, str]  # chart name -> drawn, error, empty, pending or missing


def chart_verdicts(states: list[dict], expected: set[str], final: bool) -> Verdict:
    """Judges the probed chart states against the charts the dashboard must show.

    A chart with an error alert or an empty state fails at once; one still
    loading or not drawn yet keeps the verdict open (`done` false) unless this
    is the `final` look, when it fails too. A chart the page does not show at
    all fails only on the final look (the grid renders its charts one by one).
    """
    failures: list[str] = []
    outcomes: dict[str, str] = {}
    by_name: dict[str, dict] = {}
    for state in states:
        by_name.setdefault(state["name"], state)
    for name in sorted(expected):
        state = by_name.get(name)
        if state is None:
            outcomes[name] = "missing"
            if final:
                failures.append(f"chart {name!r} is not on the dashboard page")
        elif state["errors"]:
            outcomes[name] = "error"
            failures.append(f"chart {name!r} shows an error: {' | '.join(state['errors'])[:500]}")
        elif state["empty"]:
            outcomes[name] = "empty"
            failures.append(f"chart {name!r} shows no data: {' | '.join(state['empty'])[:300]}")
        elif state["loading"] or not state["drawn"]:
            outcomes[name] = "pending"
            if final:
                what = "is still loading" if state["loading"] else "drew nothing"
                failures.append(f"chart {name!r} ({state['viz']}) {what}")
        else:
            outcomes[name] = "drawn"
    done = all(outcome in ("drawn", "error", "empty") for outcome in outcomes.values())
    return Verdict(done=done, failures=failures, outcomes=outcomes)


class Browser:
    """Headless Chromium with a fixed-width viewport, as a context manager."""

    def __init__(self, height: int = 2400):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={WIDTH},{height}")
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.driver.set_page_load_timeout(60)
        self.resize(height)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.driver.quit()

    def resize(self, height: int) -> None:
        """Sets the viewport itself (not the window), so a screenshot is
        exactly WIDTH wide and a dashboard up to `height` tall is all in view."""
        self.height = height
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def version(self) -> str:
        return self.driver.capabilities.get("browserVersion", "?")

    def login(self, base: str, username: str, password: str, timeout: float = 60) -> None:
        """Signs in through Superset's login form, as a person does."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        driver = self.driver
        driver.get(f"{base}/login/")
        wait = WebDriverWait(driver, timeout)
        wait.until(ec.presence_of_element_located((By.ID, "username"))).send_keys(username)
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        try:
            wait.until(lambda d: "/login" not in d.current_url)
        except Exception as exc:
            raise RuntimeError(f"login as {username!r} did not leave the login page") from exc

    def open_dashboard(self, url: str, expected: set[str], timeout: float = 90, settle: float = 2.0) -> Verdict:
        """Opens the dashboard and judges its charts once they are done (see `wait`);
        a dashboard taller than the viewport gets a taller viewport first."""
        self.driver.get(url)
        verdict = self.wait(expected, timeout, settle)
        bottom = self.bottom()
        if bottom > self.height:
            # every chart in view, as on a tall screen; they redraw at the new size
            self.resize(bottom)
            verdict = self.wait(expected, timeout, settle)
        return verdict

    def wait(self, expected: set[str], timeout: float, settle: float) -> Verdict:
        """Waits until each expected chart is drawn, shows an error or shows
        no data (or `timeout` passes), then, after `settle` seconds for the
        charts' animations, judges them once more."""
        deadline = time.monotonic() + timeout
        while not chart_verdicts(self.probe(), expected, final=False).done and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(settle)
        return chart_verdicts(self.probe(), expected, final=True)

    def probe(self) -> list[dict]:
        return self.driver.execute_script(PROBE_JS)

    def bottom(self) -> int:
        """Where the dashboard's grid ends, in page pixels plus a margin (its
        container stretches to the viewport; the grid holds just the charts)."""
        return self.driver.execute_script(
            "const g = document.querySelector('[data-test=\"grid-content\"]') || document.body;"
            "return Math.ceil(g.getBoundingClientRect().bottom + window.scrollY) + 16;")

    def screenshot(self, path: pathlib.Path, attempts: int = 3) -> tuple[int, int, list[str]]:
        """Saves the whole dashboard (page header to the last chart) as an
        optimised PNG at `path`; returns its size in pixels and the charts
        that are blank in it (none: every chart's area has something drawn).

        The dashboard is in the viewport (`open_dashboard`), so the capture
        is a clip of what is drawn: capturing beyond the viewport resizes the
        page, and Superset redraws its charts, blank while the capture is
        taken. A capture with a blank chart is taken again, a second apart."""
        for attempt in range(attempts):
            areas = self.driver.execute_script(CHART_AREAS_JS)
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": False,
                "clip": {"x": 0, "y": 0, "width": WIDTH, "height": min(self.bottom(), self.height), "scale": 1}})
            image = decode_png(base64.b64decode(shot["data"]))
            blank = blank_areas(image, areas)
            if not blank or attempt == attempts - 1:
                write_png(image, path)
                return image.width, image.height, blank
            time.sleep(1)
        raise AssertionError("unreachable")


# Where each chart draws (its `.slice_container`), in page pixels.
CHART_AREAS_JS = """
return Array.from(document.querySelectorAll('[data-test="chart-grid-component"]')).map(el => {
  const r = (el.querySelector('.slice_container') || el).getBoundingClientRect();
  return {name: el.getAttribute('data-test-chart-name') || '', x: r.left + window.scrollX,
          y: r.top + window.scrollY, width: r.width, height: r.height};
});
"""


def blank_areas(image, areas: list[dict], min_ink: float = 0.005) -> list[str]:
    """The names of the areas in which less than `min_ink` of the pixels
    differ from the area's most common colour (its background)."""
    blank = []
    for area in areas:
        box = (int(area["x"]), int(area["y"]), int(area["x"] + area["width"]), int(area["y"] + area["height"]))
        crop = image.crop(box)
        pixels = crop.width * crop.height
        colors = crop.getcolors(maxcolors=pixels) if pixels else None
        ink = (pixels - max(count for count, _ in colors)) / pixels if colors else 0.0
        if ink < min_ink:
            blank.append(area["name"])
    return blank


def decode_png(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def write_png(image, path: pathlib.Path) -> None:
    """Writes the screenshot as a 256-colour optimised PNG (a UI's flat
    colours survive the palette, at a fraction of the browser's PNG size)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, format="PNG", optimize=True)
