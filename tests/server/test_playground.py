"""GET /playground and GET /: static, strict headers, no key embedded, off under --no-playground. The page
itself is driven in a real browser in test_playground_browser.py."""
import fnmatch
import re
import tomllib
from pathlib import Path

from tests.support.server_fixtures import Client, clean_error, run

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "server" / "static"


def _get(model_dir, paths, **settings):
    async def main():
        async with Client(model_dir, **settings) as c:
            return [await c.get(p) for p in paths]
    return run(main())


def test_page_and_assets_come_with_strict_headers(model_dirs):
    page, js, css, index = _get(model_dirs["d2f"], ["/playground", "/playground/playground.js",
                                                    "/playground/playground.css", "/"], api_keys=["sekret-key"])
    for r, kind in [(page, "text/html"), (js, "text/javascript"), (css, "text/css"), (index, "text/html")]:
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert "sekret-key" not in r.text  # the page asks for the key; the server never writes it in
    assert 'href="/playground"' in index.text
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page.text, re.S)
    assert scripts == [""] and 'src="/playground/playground.js"' in page.text  # no inline script
    assert not re.search(r"\son[a-z]+=", page.text) and " style=" not in page.text


def test_unknown_assets_and_the_api_are_unchanged(model_dirs):
    missing, up, models = _get(model_dirs["d2f"], ["/playground/app.py", "/playground/..%2Fapp.py", "/v1/models"],
                               api_keys=["k"])
    clean_error(missing, 404)
    assert up.status_code == 404
    assert models.status_code == 401  # the page is open, the API still needs the key


def test_no_playground_turns_both_routes_off(model_dirs):
    for r in _get(model_dirs["d2f"], ["/playground", "/playground/playground.js", "/"], no_playground=True):
        clean_error(r, 404)


def test_model_text_never_reaches_html():
    """Every model string reaches the DOM through textContent: the script uses no HTML sink at all."""
    source = (STATIC / "playground.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setAttribute(\"style", "localStorage", "sessionStorage"):
        assert sink not in source, sink


def test_every_static_file_ships_in_the_package():
    """The wheel carries server/static/ through package-data: a new file type would be left out silently."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["d2f.server"]
    files = [p.relative_to(ROOT / "server").as_posix() for p in STATIC.iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), files
