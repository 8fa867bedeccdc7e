-- Haven 0.3.0-broken: the WHOLE current schema as released (init.sql itself is fine;
-- only the upgrade migration v2_004_broken.sql is broken).
-- DROPS and recreates every table: run only on an empty database.
CREATE EXTENSION IF NOT EXISTS vector;
DROP TABLE IF EXISTS document_tags CASCADE;
DROP TABLE IF EXISTS chunks CASCADE;
DROP TABLE IF EXISTS documents CASCADE;
DROP TABLE IF EXISTS collections CASCADE;
CREATE TABLE collections (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO collections (name) VALUES ('default');
CREATE TABLE documents (
    id             BIGSERIAL PRIMARY KEY,
    title          TEXT NOT NULL,
    source_uri     TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    collection_id  BIGINT REFERENCES collections(id),
    language       TEXT
);
CREATE TABLE chunks (
    id                BIGSERIAL PRIMARY KEY,
    document_id       BIGINT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    chunk_index       INTEGER NOT NULL DEFAULT 0,
    content           TEXT NOT NULL,
    embedding         vector(768),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    embedding_status  TEXT NOT NULL DEFAULT 'pending',
    embedded_at       TIMESTAMPTZ,
    token_count       INTEGER,
    CONSTRAINT chunks_document_chunk_uniq UNIQUE (document_id, chunk_index)
);
CREATE INDEX chunks_embedding_status_idx ON chunks (embedding_status);
CREATE TABLE document_tags (
    document_id  BIGINT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    tag          TEXT NOT NULL,
    PRIMARY KEY (document_id, tag)
);
