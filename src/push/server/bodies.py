"""Request bodies of the JSON API, read strictly and only after the caller is known.

The API's write routes take their body through `body(Model)`, a dependency declared after
the one that authenticates and authorizes the caller, so an anonymous or under-privileged
write is refused (401/403) before its body is even read. A body is at most
`MAX_BODY_BYTES`, UTF-8, strict JSON (no NaN or Infinity, no lone UTF-16 surrogates, nested
at most `MAX_DEPTH` deep) and must be the route's model; anything else is InvalidRequest
(400) with one clear line, and nothing is written. Limits: docs/names.md#limits.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from push.errors import InvalidRequest
from push.model import first_problem

MAX_BODY_BYTES = 64 * 1024
MAX_DEPTH = 32

M = TypeVar("M", bound=BaseModel)


class BodyTooLarge(InvalidRequest):
    """A request body over the limit (413)."""


def _refuse_constant(name: str) -> Any:
    raise InvalidRequest(f"the body is not strict JSON: {name} is not a number JSON allows")


def _check_strings(value: Any, depth: int = 0) -> None:
    """Every string (keys too) is valid Unicode text (no lone surrogate: it could never be
    stored as UTF-8), and the document is at most MAX_DEPTH deep."""
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"the body is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("the body holds a lone UTF-16 surrogate (\\ud800-\\udfff): not text") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k, depth + 1)
            _check_strings(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v, depth + 1)


def parse_json(data: bytes) -> Any:
    """A strict JSON document from a request body (InvalidRequest if it is not one)."""
    if len(data) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"the body is {len(data)} bytes, at most {MAX_BODY_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidRequest(f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise InvalidRequest(f"the body is not JSON: {e}") from None
    _check_strings(value)
    return value


def parse(model: type[M], data: bytes, *, optional: bool = False) -> M:
    """The body as `model`; an empty body is the model's defaults when `optional`."""
    if not data.strip() and optional:
        return model()
    value = parse_json(data)
    if value is None and optional:
        return model()
    try:
        return model.model_validate(value, strict=False)
    except ValidationError as e:
        raise InvalidRequest(f"invalid request body: {first_problem(e)}") from None


def body(model: type[M], *, optional: bool = False) -> Callable[[Request], Awaitable[M]]:
    """A dependency that reads the request's body as `model` (declare it after the caller's)."""

    async def read(request: Request) -> M:
        return parse(model, await request.body(), optional=optional)

    return read


def openapi(model: type[BaseModel], *, optional: bool = False) -> dict[str, Any]:
    """The `openapi_extra` documenting a body read by `body(model)`."""
    return {"requestBody": {"required": not optional, "content": {
        "application/json": {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}
