"""The OpenAPI document: a valid 3.1 document of every route in the table, with refs that resolve,
and what `GET /openapi.json` of the real route table answers."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from deployments.config import parse_app_config
from deployments.http.ingress import Ingress
from deployments.http.openapi import openapi_document
from deployments.http.routes import ApiRoute
from tests.unit.test_guarded_handle import FakeHandle, echo


@pytest.fixture(scope="module")
def ingress(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    args = copy.deepcopy(config["applications"][0]["args"])
    args["cache_dir"] = str(tmp_path_factory.mktemp("openapi-cache"))
    # The class serve.ingress wrapped: built without Ray, its routes only need no handle.
    ingress_class = Ingress.func_or_class.__bases__[0]
    return ingress_class(parse_app_config(args), {}, {}, FakeHandle(echo), None)


@pytest.fixture(scope="module")
def routes(ingress: Any) -> list[ApiRoute]:
    return ingress.api_routes()


@pytest.fixture(scope="module")
def document(routes: list[ApiRoute]) -> dict[str, Any]:
    return openapi_document(routes)


def refs_in(value: Any) -> list[str]:
    found, pending = [], [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                found.append(node["$ref"])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_route_of_the_table_is_documented(
    routes: list[ApiRoute], document: dict[str, Any]
) -> None:
    documented = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    assert documented == {(route.path, route.method) for route in routes}
    assert ("/openapi.json", "GET") in documented
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == len(routes)


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    refs = refs_in(document)
    assert "#/components/schemas/ClassifyRequest" in refs
    for ref in refs:
        assert isinstance(resolve(document, ref), dict), ref


def test_bodies_answers_and_errors_come_from_the_models(document: dict[str, Any]) -> None:
    classify = document["paths"]["/v1/classify"]["post"]
    body = classify["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ClassifyRequest"}
    answer = classify["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/ClassifyResponse"}
    assert set(classify["responses"]) == {"200", "400", "401", "403", "413", "422", "429", "503"}
    error = classify["responses"]["422"]["content"]["application/json"]["schema"]
    assert resolve(document, error["$ref"])["properties"]["error"]
    assert classify["security"] == [{"ApiKey": []}]
    scheme = document["components"]["securitySchemes"]["ApiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"


def test_public_routes_need_no_key_and_may_only_be_unready(document: dict[str, Any]) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        operation = document["paths"][path]["get"]
        assert operation["security"] == []
        assert not {"401", "403", "429"} & set(operation["responses"])
        assert "503" in operation["responses"]


def test_uploads_are_multipart_with_a_binary_file(document: dict[str, Any]) -> None:
    upload = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    schema = upload["multipart/form-data"]["schema"]
    assert schema["properties"]["file"] == {"type": "string", "format": "binary"}
    assert set(schema["required"]) == {"purpose", "file"}
    # Form fields cannot carry null: the optional ones are just left out.
    assert schema["properties"]["expires_after[seconds]"]["type"] == "integer"
    content = document["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]["200"]
    assert content["content"]["application/octet-stream"]["schema"]["format"] == "binary"


def test_query_and_path_parameters_are_listed(document: dict[str, Any]) -> None:
    listing = document["paths"]["/v1/files"]["get"]["parameters"]
    by_name = {parameter["name"]: parameter for parameter in listing}
    assert set(by_name) == {"purpose", "limit", "order", "after"}
    assert all(parameter["in"] == "query" and not parameter["required"] for parameter in listing)
    assert by_name["limit"]["schema"]["maximum"] == 10_000
    assert by_name["purpose"]["schema"]["type"] == "string"
    cancel = document["paths"]["/v1/batches/{batch_id}/cancel"]["post"]["parameters"]
    assert cancel == [
        {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]


@pytest.mark.parametrize(("root_path", "server"), [("", "/"), ("/generative", "/generative")])
def test_the_app_serves_its_own_document(ingress: Any, root_path: str, server: str) -> None:
    with TestClient(ingress.__serve_build_asgi_app__(), root_path=root_path) as client:
        response = client.get(f"{root_path}/openapi.json")
    assert response.status_code == 200
    served = response.json()
    assert served["servers"] == [{"url": server}]
    assert "/v1/classify" in served["paths"] and "/openapi.json" in served["paths"]
    validate(served)
