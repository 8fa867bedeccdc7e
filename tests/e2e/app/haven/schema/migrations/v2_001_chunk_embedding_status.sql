-- v2_001: track the embedding pipeline per chunk (idempotent: succeeds after a fresh init.sql).
ALTER TABLE chunks ADD COLUMN IF NOT EXISTS embedding_status TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE chunks ADD COLUMN IF NOT EXISTS embedded_at TIMESTAMPTZ;
UPDATE chunks SET embedding_status = 'embedded' WHERE embedding IS NOT NULL AND embedding_status = 'pending';
CREATE INDEX IF NOT EXISTS chunks_embedding_status_idx ON chunks (embedding_status);
