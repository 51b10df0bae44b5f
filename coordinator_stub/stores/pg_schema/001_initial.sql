-- The coordinator's state on PostgreSQL (coordinator_stub/stores/postgres.py).
-- One row per hot record (queued, leased, a waiting verify gate), the write-once
-- archive (current version per id) with its history, full specs of hot records,
-- the small top-level fields of the hot document, and the two append-only logs.
-- Documents are json (not jsonb): a spec reads back exactly as enqueued, key order included.
-- Every lease rule stays in coordinator_stub/core.py: these tables only hold state.

CREATE TABLE aq_meta (
    id   integer PRIMARY KEY CHECK (id = 1),
    doc  json NOT NULL            -- seq, factories, terminalCounts, version, other small keys
);
INSERT INTO aq_meta (id, doc) VALUES
    (1, '{"version": 2, "seq": 0, "factories": {}, "terminalCounts": {"shipped": 0, "quarantined": 0}}');

CREATE TABLE aq_jobs (
    id        text PRIMARY KEY,
    state     text NOT NULL,
    priority  bigint NOT NULL,     -- spec.priority (0 when absent): the claim order's first key
    seq       bigint NOT NULL,     -- enqueue order: the claim order's second key
    leased    boolean NOT NULL,    -- the record holds a lease (active or expired)
    rec       json NOT NULL       -- the hot record, its spec cut down to SCHED_KEYS
);
-- Claim order (core.claim_key: priority DESC, seq ASC) over queued rows only:
-- finished rows never stay here, and leased rows leave the index.
CREATE INDEX aq_jobs_queued ON aq_jobs (priority DESC, seq) WHERE state = 'queued';
CREATE INDEX aq_jobs_leased ON aq_jobs (seq) WHERE leased;

CREATE TABLE aq_specs (
    id    text PRIMARY KEY,
    spec  json NOT NULL
);

CREATE TABLE aq_archive (
    id     text PRIMARY KEY,
    seq    bigint NOT NULL,
    state  text NOT NULL,
    rec    json NOT NULL
);
CREATE INDEX aq_archive_state ON aq_archive (state);

CREATE TABLE aq_history (
    n         bigserial PRIMARY KEY,
    id        text NOT NULL,
    rec       json NOT NULL,
    moved_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX aq_history_id ON aq_history (id);

CREATE TABLE aq_events (
    n   bigserial PRIMARY KEY,
    ev  json NOT NULL
);

CREATE TABLE aq_shadow_reports (
    n       bigserial PRIMARY KEY,
    report  json NOT NULL
);

-- The queue's head churns (every claim moves a row out of aq_jobs_queued, every
-- finish deletes one): dead index entries at the head slow each claim, so vacuum
-- this table far more eagerly than the default 20 % of its rows.
ALTER TABLE aq_jobs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                         autovacuum_analyze_scale_factor = 0.02);
