"""`GET /docs`: Swagger UI on the app's own OpenAPI document, public like the document itself.

The page is FastAPI's Swagger UI page (`get_swagger_ui_html`), and its script and stylesheet are
the Swagger UI 5 files the `fastapi-offline` package ships, served from `/docs/assets`: nothing is
fetched from a CDN, so the page works on machines with no way out. Every URL on the page starts
with the app's root path, so an app under a route prefix (`/generative`) gets its own page.

The document's bearer scheme gives the page an "Authorize" button: a caller pastes an API key once
and every "Try it out" sends it; `persistAuthorization` keeps it across reloads.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
SWAGGER_UI_ASSETS = files("fastapi_offline") / "static"
SWAGGER_UI_PARAMETERS = {
    "persistAuthorization": True,
    "displayRequestDuration": True,
}


def docs_routes(openapi_path: str, title: str) -> list[BaseRoute]:
    """The page at `DOCS_PATH` on the document at `openapi_path`, and the assets it loads."""

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_path}",
            title=title,
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    return [
        Route(DOCS_PATH, docs, methods=["GET"]),
        Mount(ASSETS_PATH, StaticFiles(directory=str(SWAGGER_UI_ASSETS))),
    ]
