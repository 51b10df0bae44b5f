"""The web stack of ``coordinator-stub serve``: uvicorn (HTTP/1.1 through h11) and Starlette.

Imported by ``serve`` only, never on the command seam's path: the seam stays
free of any web framework (a test checks it). The pieces, one job each:
``options`` (the flags), ``auth`` (tokens, scopes, sessions), ``protocol``
(strict framing, deadlines and the connection bound, below the app),
``server`` (the listening socket, signals, the graceful stop), ``runner``
(store operations one at a time, off the event loop), ``fleet`` (the
``/v1/fleet`` API), ``events`` (the audit logs, tailed), ``metrics``
(``/metrics``), ``views`` and ``dashboard`` (the page at ``/``), ``app``
(all of it as one Starlette app).
"""
