"""The console's assets (docs/console.md): everything the page loads is in the package, no
asset names another host, and the vendored dagre is the reviewed file with its licence."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from rabbitmesh.console.routes import STATIC_TYPES, _static_files

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "rabbitmesh" / "console" / "static"
#: The only URLs an asset may contain: the SVG namespace, and the editor's sample subscriber.
ALLOWED_URLS = {"http://www.w3.org/2000/svg", "http://127.0.0.1:9001/"}


def test_every_file_the_page_loads_is_served_from_the_package():
    html = (STATIC / "index.html").read_text()
    loaded = re.findall(r'(?:src|href)="/console/static/([^"]+)"', html)
    served = _static_files()
    assert {"console.js", "graph.js", "yaml.js", "dagre.min.js", "console.css"} <= set(loaded)
    for name in loaded:
        assert name in served and name[name.rfind(".") :] in STATIC_TYPES, name
    # No other origin: no <script>/<link> with a host, no inline script (the CSP forbids it).
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)
    assert not re.search(r"<script>(?!\s*</script>)", html)


def test_no_asset_loads_anything_from_elsewhere():
    for path in STATIC.iterdir():
        if path.suffix not in (".js", ".css", ".html"):
            continue
        urls = set(
            re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*", path.read_text())
        )
        urls = {u for u in urls if not u.startswith("//#")}  # sourceMappingURL comments
        assert urls <= ALLOWED_URLS, (path.name, urls - ALLOWED_URLS)


def test_the_vendored_dagre_is_the_pinned_release_with_its_licence():
    script = (ROOT / "scripts" / "vendor-console.sh").read_text()
    pinned = re.search(r"^SHA256=([0-9a-f]{64})$", script, re.M)
    assert pinned, "scripts/vendor-console.sh pins the sha256 of dagre.min.js"
    digest = hashlib.sha256((STATIC / "dagre.min.js").read_bytes()).hexdigest()
    assert digest == pinned.group(1), "dagre.min.js changed: re-run scripts/vendor-console.sh"
    licence = (STATIC / "DAGRE-LICENSE.txt").read_text()
    assert "Permission is hereby granted, free of charge" in licence  # MIT
