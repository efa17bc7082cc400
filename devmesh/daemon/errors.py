"""The daemon's own refusal: an API command it would not carry out, with the API's code."""

from __future__ import annotations

from devmesh.api.types import ErrorCode
from devmesh.core.problems import MeshError


class Refused(MeshError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
