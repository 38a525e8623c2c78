"""Helpers for the page tests: the Chromium binary and flags, and screenshots into an ignored folder."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
# Screenshots land here (git ignores it): look at them after a run.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def chart_points(page) -> dict:
    """{canvas id: {"labels": [...], "data": [[dataset 0 points], ...]}} of every chart on the page."""
    return page.evaluate("""() => Object.fromEntries(Object.entries(window.gsCharts).map(([id, c]) =>
        [id, {labels: c.data.labels, data: c.data.datasets.map((d) => d.data)}]))""")
