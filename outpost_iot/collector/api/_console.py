"""The console: the web page the collector serves at ``/console/`` on its HTTPS listener.

Its files are inside the package (``collector/console/``), read once at start: no build step
and no CDN. Only the files listed in ``FILES`` are served, with a strict Content-Security-Policy
(scripts, styles, images and connections from this origin only, no inline script, no framing),
so a string a device sent that reached the page could not run even if it were not rendered as
text (it always is: the console never builds HTML from data).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import RedirectResponse, Response

router = APIRouter(include_in_schema=False)

FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "vendor/uplot-1.6.31.min.js": "text/javascript; charset=utf-8",
    "vendor/uplot-1.6.31.min.css": "text/css; charset=utf-8",
    "vendor/uplot-LICENSE.txt": "text/plain; charset=utf-8",
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def _load() -> dict[str, bytes]:
    folder = resources.files("outpost_iot.collector") / "console"
    out = {}
    for name in FILES:
        part = folder
        for piece in name.split("/"):
            part = part / piece
        out[name] = part.read_bytes()
    return out


_CONTENT = _load()


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@router.get("/console")
def console_no_slash() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@router.get("/console/{name:path}")
def console_file(name: str) -> Response:
    name = name or "index.html"
    if name not in FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no console file {name[:80]!r}")
    # The page itself is never cached (a new version takes effect at once); the vendored
    # library's name carries its version.
    cache = "public, max-age=86400, immutable" if name.startswith("vendor/") else "no-cache"
    return Response(
        _CONTENT[name],
        media_type=FILES[name],
        headers={**HEADERS, "Cache-Control": cache},
    )
