"""The OpenAPI 3.1 document of the HTTP surface, generated from the route table.

Every schema comes from the routes' pydantic models, so the document cannot drift from what the
endpoints validate and answer: a model change is a document change.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse

from deployments.http.errors import ErrorBody
from deployments.http.routes import ApiRoute, Endpoint
from deployments.http.streaming import NDJSON

OPENAPI_VERSION = "3.1.0"
OPENAPI_PATH = "/openapi.json"
SCHEMA_REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "ApiKey"
BINARY = {"type": "string", "format": "binary"}
PATH_PARAMETER = re.compile(r"\{(\w+)\}")
# Statuses routes answer besides their own `errors`: any may be unready or overloaded; those
# behind a key check it and count the caller's requests.
COMMON_ERRORS = (503,)
GUARDED_ERRORS = (401, 403, 429)
ERROR_DESCRIPTIONS = {
    400: "Bad request: the message says what to change",
    401: "Missing or unknown API key",
    403: "The key lacks the scope this endpoint needs",
    404: "Not found",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "A field is invalid: the message names it",
    429: "Rate limited; Retry-After says when to try again",
    503: "Not ready or overloaded; Retry-After says when to try again",
}

ModelKey = tuple[type[BaseModel], JsonSchemaMode]


class OpenApiDocument(BaseModel):
    """What `GET /openapi.json` answers."""

    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


def openapi_document(routes: Sequence[ApiRoute], root_path: str = "") -> dict[str, Any]:
    """The document of `routes`, whose paths are relative to the app served at `root_path`."""
    keys = _model_keys(routes)
    refs_by_key, top = models_json_schema(keys, ref_template=SCHEMA_REF)
    refs = {key: refs_by_key[key] for key in keys}
    schemas: dict[str, Any] = top.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    for route in routes:
        operation = _operation(route, refs, schemas)
        if operation["operationId"] in operation_ids:
            raise ValueError(f"two routes have the endpoint name {operation['operationId']!r}")
        operation_ids.add(operation["operationId"])
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "capserve", "version": version("capserve")},
        "servers": [{"url": root_path or "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: `Authorization: Bearer <key>`",
                }
            },
        },
    }


def openapi_endpoint(routes: Callable[[], Sequence[ApiRoute]]) -> Endpoint:
    """The endpoint answering the document of `routes()`; it is called at the first request, so
    the table may include this very endpoint's route. The table never changes, so each app's
    document is built once."""
    documents: dict[str, dict[str, Any]] = {}

    async def openapi(request: Request) -> JSONResponse:
        root_path = request.scope.get("root_path", "")
        if root_path not in documents:
            documents[root_path] = openapi_document(routes(), root_path)
        return JSONResponse(documents[root_path])

    return openapi


def _model_keys(routes: Sequence[ApiRoute]) -> list[ModelKey]:
    keys: list[ModelKey] = [(ErrorBody, "serialization")]
    for route in routes:
        keys += [(model, "validation") for model in (route.body, route.form, route.query) if model]
        keys += [(model, "serialization") for model in (route.answer, route.lines) if model]
    return list(dict.fromkeys(keys))


def _operation(
    route: ApiRoute, refs: dict[ModelKey, Any], schemas: dict[str, Any]
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.endpoint.__name__,
        "summary": route.summary,
        "security": [] if route.access == "public" else [{SECURITY_SCHEME: []}],
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in PATH_PARAMETER.findall(route.path)
    ]
    if route.query:
        query = _definition(refs[route.query, "validation"], schemas)
        parameters += [
            {
                "name": name,
                "in": "query",
                "required": name in query.get("required", []),
                "schema": _without_null(schema),
            }
            for name, schema in query["properties"].items()
        ]
    if parameters:
        operation["parameters"] = parameters
    if route.body:
        body = _content("application/json", refs[route.body, "validation"])
        operation["requestBody"] = {"required": True, **body}
    elif route.form:
        form = _form_schema(_definition(refs[route.form, "validation"], schemas))
        operation["requestBody"] = {"required": True, **_content("multipart/form-data", form)}
    operation["responses"] = _responses(route, refs)
    return operation


def _responses(route: ApiRoute, refs: dict[ModelKey, Any]) -> dict[str, Any]:
    if route.binary:
        ok = _content("application/octet-stream", BINARY)
    elif route.answer:
        ok = _content("application/json", refs[route.answer, "serialization"])
    else:
        raise ValueError(f"{route.method} {route.path} declares neither an answer nor binary")
    if route.lines:
        # OpenAPI 3.1 has no schema for a sequence of documents: this one is of each line.
        ok["content"][NDJSON] = {"schema": refs[route.lines, "serialization"]}
    statuses = {*route.errors, *COMMON_ERRORS}
    if route.access != "public":
        statuses.update(GUARDED_ERRORS)
    responses = {"200": {"description": "OK", **ok}}
    error = refs[ErrorBody, "serialization"]
    for status in sorted(statuses):
        description = ERROR_DESCRIPTIONS.get(status, "Error")
        responses[str(status)] = {"description": description, **_content("application/json", error)}
    return responses


def _content(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {media_type: {"schema": schema}}}


def _definition(ref: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """The component a `$ref` names; query and form fields are spelled out, not referenced."""
    return schemas[ref["$ref"].rsplit("/", 1)[-1]]


def _form_schema(form: dict[str, Any]) -> dict[str, Any]:
    properties = {name: _without_null(schema) for name, schema in form["properties"].items()}
    return {
        **form,
        "properties": {**properties, "file": BINARY},
        "required": [*form.get("required", []), "file"],
    }


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query or form field cannot carry null: absent is how it is left unset."""
    variants = [variant for variant in schema.get("anyOf", []) if variant != {"type": "null"}]
    if len(variants) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    if rest.get("default", ...) is None:
        del rest["default"]
    return {**rest, **variants[0]}
