"""OpenAPI documentation of error responses: every one is the shared `ErrorResponse` object."""

from __future__ import annotations

from typing import Any

ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def error_responses(codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`{status: description}` → the `responses=` argument of a route."""
    return {status: {"description": text, "content": ERROR_CONTENT} for status, text in codes.items()}
