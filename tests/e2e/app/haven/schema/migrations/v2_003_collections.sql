-- v2_003: documents belong to collections; chunks count their tokens.
-- Fails after a fresh init.sql of 0.2.0+ (relation "collections" already exists).
CREATE TABLE collections (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO collections (name) VALUES ('default');
ALTER TABLE documents ADD COLUMN collection_id BIGINT REFERENCES collections(id);
UPDATE documents SET collection_id = (SELECT id FROM collections WHERE name = 'default');
ALTER TABLE chunks ADD COLUMN token_count INTEGER;
