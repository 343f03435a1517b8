"""Errors a client caused or can act on, and the one place they become an HTTP status and an OpenAI error body.
Free of Ray and of the engines' libraries, so the guards (auth, limits) and the router use them without the API."""

from __future__ import annotations

from typing import Optional, Union

from .engines.base import EngineDeadError
from .protocol import ErrorInfo, ErrorResponse


class APIError(Exception):
    """An error the client caused (or can act on), answered with an OpenAI-style body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
                 param: Optional[str] = None, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}  # e.g. Retry-After, WWW-Authenticate


# The errors that become an HTTP answer; anything else is a bug and stays a 500.
ANSWERED_ERRORS = (APIError, EngineDeadError)


def as_api_error(error: Union[APIError, EngineDeadError]) -> APIError:
    if isinstance(error, EngineDeadError):
        return APIError(503, str(error), type_="server_error", code="engine_dead")
    return error


def error_response(error: Union[APIError, EngineDeadError]) -> tuple[int, ErrorResponse]:
    """The one place an error becomes a status and an OpenAI error body (its headers: `as_api_error(e).headers`)."""
    error = as_api_error(error)
    info = ErrorInfo(message=error.message, type=error.type, param=error.param, code=error.code)
    return error.status, ErrorResponse(error=info)


def deadline_passed(where: str) -> APIError:
    return APIError(504, f"the request's deadline passed while {where}", type_="server_error", code="timeout")


def prompt_too_long(limit: int, why: str) -> APIError:
    return APIError(400, f"this model's maximum context length is {limit} tokens, but {why}",
                    code="context_length_exceeded", param="prompt")
