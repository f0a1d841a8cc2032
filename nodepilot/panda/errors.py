"""The error every server client raises, apart from the clients so that any module can catch it."""

from __future__ import annotations

from nodepilot.errors import ErrorCode


class ServerError(Exception):
    """A call that did not succeed. ``retryable``: a later attempt may succeed (connection
    trouble, 5xx, a garbled reply); False: the server refused this call as it is. ``refused``: the
    server refused the pilot itself as it is configured (credentials, client certificate, the
    server's certificate, the API dialect): final for every call, the configuration must change."""

    def __init__(self, message: str, retryable: bool = False,
                 code: int = ErrorCode.SERVER_COMMUNICATION, refused: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable and not refused
        self.code = int(code)
        self.refused = refused
