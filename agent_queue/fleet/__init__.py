"""Fleet mode: the client side of the coordinator contract (docs/fleet-api.md).

``transport`` moves one request to the coordinator (command seam or HTTP),
``client`` turns the contract into typed calls with retries and error mapping,
``heartbeat`` keeps a lease alive while a job runs. Kept import-free so that
importing one of them never drags in the others (or ``requests``).
"""
