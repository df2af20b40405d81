"""`GET /docs` of the real ingress app: Swagger UI on the app's own document, every asset served
by the app (no CDN), public with keys configured, and right under a route prefix.

tests/e2e/test_api_docs_browser.py opens the page in Chromium against the running app."""

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from deployments.config import parse_app_config
from deployments.http.auth import key_hash
from deployments.http.ingress import Ingress
from tests.unit.test_guarded_handle import FakeHandle, echo

KEY = "sk-capserve-docs"
ASSET = re.compile(r'(?:src|href)="([^"]+)"')


@pytest.fixture(scope="module")
def ingress(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    args = copy.deepcopy(config["applications"][0]["args"])
    args["cache_dir"] = str(tmp_path_factory.mktemp("docs-cache"))
    args["auth"] = {"api_keys": [{"name": "admin", "sha256": key_hash(KEY), "scopes": ["admin"]}]}
    # The class serve.ingress wrapped, built without Ray: the pages call no handle.
    ingress_class = Ingress.func_or_class.__bases__[0]
    return ingress_class(parse_app_config(args), {}, {}, FakeHandle(echo), None)


@pytest.fixture(params=["", "/generative"], ids=["root", "route-prefix"])
def served(ingress: Any, request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, str]]:
    root_path = request.param
    with TestClient(ingress.__serve_build_asgi_app__(), root_path=root_path) as client:
        yield client, root_path


def test_docs_is_swagger_ui_on_the_apps_own_document(served: tuple[TestClient, str]) -> None:
    client, root_path = served
    page = client.get(f"{root_path}/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle(" in page.text
    assert f"url: '{root_path}/openapi.json'" in page.text
    assert '"persistAuthorization": true' in page.text


def test_every_asset_of_the_page_comes_from_the_app(served: tuple[TestClient, str]) -> None:
    client, root_path = served
    page = client.get(f"{root_path}/docs").text
    assert "//" not in "".join(re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)""", page))
    assets = ASSET.findall(page)
    assert {asset.rsplit("/", 1)[-1] for asset in assets} == {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "favicon.png",
    }
    for asset in assets:
        assert asset.startswith(f"{root_path}/docs/assets/"), asset
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 1000, asset
    script = client.get(f"{root_path}/docs/assets/swagger-ui-bundle.js")
    assert "javascript" in script.headers["content-type"]


def test_the_page_and_its_assets_need_no_key_when_keys_are_configured(
    served: tuple[TestClient, str],
) -> None:
    client, root_path = served
    assert client.get(f"{root_path}/v1/models").status_code == 401
    assert client.get(f"{root_path}/docs").status_code == 200
    assert client.get(f"{root_path}/docs/assets/swagger-ui.css").status_code == 200


def test_the_document_offers_the_bearer_key_the_page_asks_for(
    served: tuple[TestClient, str],
) -> None:
    client, root_path = served
    document = client.get(f"{root_path}/openapi.json").json()
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    # The page is not an API operation: the document lists only the route table.
    assert not any(path.startswith("/docs") for path in document["paths"])


def test_an_unknown_asset_is_a_json_404(served: tuple[TestClient, str]) -> None:
    client, root_path = served
    response = client.get(f"{root_path}/docs/assets/nope.js")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
