-- The session registry, as in SQLite's first migration (host/src/registry.rs).
CREATE TABLE sessions (
    provider TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    name TEXT,
    token TEXT,
    labels JSONB NOT NULL DEFAULT '{}',
    workdir TEXT NOT NULL DEFAULT '',
    image TEXT,
    state TEXT NOT NULL,
    owner TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (provider, sandbox_id)
);
CREATE INDEX sessions_by_id ON sessions(sandbox_id);
CREATE INDEX sessions_by_owner ON sessions(owner);
CREATE TABLE state_history (
    seq BIGSERIAL PRIMARY KEY,
    provider TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    at_ms BIGINT NOT NULL
);
CREATE INDEX history_by_sandbox ON state_history(provider, sandbox_id);
