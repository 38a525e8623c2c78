"""The model page, playground and keys page: static files (HTML, JS, CSS, the vendored Chart.js
UMD build with its license) that read the server's JSON APIs; no build step. `STATIC_DIR` is
where they lie; api/model_page.py serves them."""

from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")
PAGES = {"model": STATIC_DIR / "index.html", "keys": STATIC_DIR / "keys.html"}
