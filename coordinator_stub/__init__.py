"""coordinator-stub: a complete file-backed fleet coordinator (leases, fencing, reaper)."""
