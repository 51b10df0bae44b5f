"""The factory's fleet token, and the rotation it survives: re-read from ``AQ_FLEET_TOKEN_FILE`` after a 401.

The documented rotation (docs/deploy.md) is ``coordinator-stub factory rotate``,
the new token written into the daemon's token file, then ``factory revoke`` of
the old token. The daemon read the file once at start-up (``Settings``); when
the coordinator answers 401, the token it holds may simply be the revoked old
one, so the HTTP transport asks ``reread`` whether the file now holds another
token, and retries that one request once with it. A token given directly
(``AQ_FLEET_TOKEN``) has no file to re-read: the 401 stands.

The token never leaves this object but through ``current`` (for the
Authorization header): its ``repr`` hides it, log lines name the file only, and
``redact`` removes every token it ever held from a text.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from agent_queue.errors import ConfigError
from agent_queue.settings import read_token_file

log = logging.getLogger(__name__)


class TokenSource:
    """A bearer token, fixed or backed by a file that may be rewritten; safe to share between threads."""

    def __init__(self, token: str | None, path: Path | None = None) -> None:
        self.path = path
        self.__token = token or None
        self.__held = [t for t in (self.__token,) if t]
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenSource({'set' if self.__token else 'unset'}, file={str(self.path) if self.path else None})"

    def current(self) -> str | None:
        return self.__token

    def reread(self) -> bool:
        """After a 401: True when the file now holds another token (then in use); False to let the 401 stand."""
        if self.path is None:
            return False
        try:
            fresh = read_token_file(self.path)
        except ConfigError as exc:  # its message names the file, never a token
            log.warning("fleet token: cannot re-read after a 401: %s", exc)
            return False
        with self._lock:
            if fresh == self.__token:
                return False
            self.__token = fresh
            self.__held.append(fresh)
        log.info("fleet token: re-read from %s after a 401 (a rotated token); retrying once", self.path)
        return True

    def redact(self, text: str) -> str:
        for token in self.__held:
            text = text.replace(token, "***")
        return text
