-- Haven 0.1.0: the WHOLE current schema (v1 + v2_001 + v2_002).
-- DROPS and recreates every table: run only on an empty database.
CREATE EXTENSION IF NOT EXISTS vector;
DROP TABLE IF EXISTS chunks CASCADE;
DROP TABLE IF EXISTS documents CASCADE;
CREATE TABLE documents (
    id          BIGSERIAL PRIMARY KEY,
    title       TEXT NOT NULL,
    source_uri  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
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
    CONSTRAINT chunks_document_chunk_uniq UNIQUE (document_id, chunk_index)
);
CREATE INDEX chunks_embedding_status_idx ON chunks (embedding_status);
