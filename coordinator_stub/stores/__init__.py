"""Where the coordinator's state lives. The core (``coordinator_stub.core``) sees it only through ``base``.

One module, one job::

    base.py         the contract: Store, Tx, what every store must guarantee (read this first)
    memory.py       MemoryStore: process memory, for unit tests and the hypothesis state machine
    file.py         JsonStore: a directory, safe for many processes (the embedded default)
      file_tx.py      its transaction view and the state it keeps between operations
      journal.py      its snapshot + write-ahead journal format: encode, replay, torn tails
      job_files.py    its per-job files: specs of live jobs, the write-once archive, history
      locking.py      flock(2) per operation, with a deadline (LockTimeout)
      claim_index.py  queued ids in claim order and leased ids, kept across operations
      tracking.py     dict subclasses that note which hot records an operation changed
    postgres.py     PgStore: a PostgreSQL database, shared by several ``serve`` replicas (docs/postgres.md)
      pg_schema/      its numbered migrations (SQL)
      pg_migrations.py  applying them, and the schema version every store checks
      pg_admin.py     ``migrate`` and ``copy`` (a state directory into a database)
    choose.py       the front ends' choice of store (and its clock) from ``--state``

The front ends (``seam.py``, ``cli.py``) open a store through ``choose.py``
(``cli.py`` also names ``JsonStore`` for ``serve``'s checkpoint on stop);
psycopg is imported by ``postgres.py`` and ``pg_admin.py`` only.

Nothing is re-exported here: the command seam pays for every module it
imports, so each importer names the module it needs.
"""
