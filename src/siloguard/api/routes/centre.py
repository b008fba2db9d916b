"""The privacy centre page at ``/`` and the API's documentation at ``/docs`` and ``/redoc``.

The page is one HTML document, one script and one style sheet, all served from here (no
third-party asset): the browser talks to the API of the same origin and nowhere else, as its
Content-Security-Policy says. The documentation pages load Swagger UI and ReDoc from the
files the ``fastapi-offline`` package ships (kept with FastAPI's own page builders; only the
asset URLs change), so they work with no network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["install"]

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(include_in_schema=False)


def _docs_assets() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


def _page_headers() -> dict[str, str]:
    """The centre's policy: its own files, calls to its own origin, and the answer page's one
    inline style (the answer is shown in a frame, which inherits this policy)."""
    from siloguard.api.answer import style_hash

    return {
        "content-security-policy": (
            "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' blob: data:; "
            f"style-src 'self' '{style_hash()}'; frame-src 'self' blob:; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'"
        ),
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
    }


@lru_cache(maxsize=1)
def _centre_html() -> str:
    from siloguard.api.answer import ENV
    from siloguard.dsr.common import consent_purposes
    from siloguard.policies.taxonomy import purpose_name

    purposes = [{"key": p, "name": purpose_name(p)} for p in consent_purposes()]
    return ENV.get_template("centre.html.j2").render(
        purposes=purposes, deadlines="one month under the GDPR, 45 days under the CCPA, 15 business days for an opt-out")


@router.get("/", response_class=HTMLResponse)
def centre() -> HTMLResponse:
    return HTMLResponse(_centre_html(), headers=_page_headers())


@router.get("/docs", response_class=HTMLResponse)
def swagger() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="siloguard privacy API",
                               swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
                               swagger_favicon_url="/docs-assets/favicon.png")


@router.get("/redoc", response_class=HTMLResponse)
def redoc() -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title="siloguard privacy API", redoc_js_url="/docs-assets/redoc.standalone.js",
                          redoc_favicon_url="/docs-assets/favicon.png", with_google_fonts=False)


def install(app: FastAPI) -> None:
    """Add the page, its files and the offline documentation to ``app`` (built with docs_url=None, redoc_url=None)."""
    app.include_router(router)
    app.mount("/centre", StaticFiles(directory=STATIC), name="centre")
    app.mount("/docs-assets", StaticFiles(directory=_docs_assets()), name="docs-assets")
