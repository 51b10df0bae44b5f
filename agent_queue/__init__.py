"""agent-queue: run AI coding agents on a queue of jobs, on one host or a fleet.

Kept import-free on purpose: the coordinator's command seam imports pieces of
this package on every call, and must not pay for click or requests.
"""

__version__ = "0.1.0"
