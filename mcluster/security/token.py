"""The HTTP API's bearer token: read from a file, compared in constant time, re-read on SIGHUP.

The token lives in a file (a compose or Kubernetes secret, mode 0600) rather than on the
command line, where ``ps`` would show it. Its contents, stripped of surrounding white
space, are the token. It is never logged, never put in an error message, and compared with
``hmac.compare_digest`` so the time a wrong guess takes says nothing about the right one.

Rotation: write the new token into the file and send the agent SIGHUP. A file that cannot
be read (or is empty) at a reload leaves the old token in force, with an error in the log.
"""

from __future__ import annotations

import hmac
import logging
import os

from mcluster.security.errors import GuardError

log = logging.getLogger("mcluster.security")

#: A token file larger than this is surely not a token (a wrong path, a key bundle).
MAX_TOKEN_FILE = 4096
ENV_TOKEN_FILE = "MCLUSTER_API_TOKEN_FILE"


class TokenError(GuardError):
    """The token file cannot be used; the message names the file and why (never its text)."""


def read_token(path: str) -> bytes:
    """The token in ``path``: its contents stripped of surrounding white space."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise TokenError(f"--api-token-file {path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKEN_FILE:
        raise TokenError(
            f"--api-token-file {path}: larger than {MAX_TOKEN_FILE} bytes, not a token"
        )
    token = data.strip()
    if not token:
        raise TokenError(f"--api-token-file {path}: the file is empty")
    if any(b < 0x21 or b > 0x7E for b in token):
        raise TokenError(
            f"--api-token-file {path}: the token must be printable ASCII without spaces"
        )
    return token


class ApiToken:
    """The token in force, and the file it came from."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._token = read_token(self.path)

    def reload(self) -> bool:
        """Re-read the file (SIGHUP). False, with the old token kept, when it is unusable."""
        try:
            token = read_token(self.path)
        except TokenError as exc:
            log.error("API token not rotated; keeping the one in force: %s", exc)
            return False
        changed = not hmac.compare_digest(token, self._token)
        self._token = token
        log.info("API token file re-read%s", " (a new token)" if changed else " (unchanged)")
        return True

    def matches(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (``Bearer <token>``)."""
        if authorization is None:
            return False
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.casefold() != "bearer":
            return False
        try:
            given = presented.strip().encode("ascii")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(given, self._token)

    def header(self) -> dict[str, str]:
        """The ``Authorization`` header a client of this agent sends."""
        return {"Authorization": f"Bearer {self._token.decode('ascii')}"}
