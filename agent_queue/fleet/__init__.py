"""Fleet mode: the coordinator client, lease heartbeat, flags and shadow mode (import-free)."""
