-- v2_002: chunks.body -> chunks.content, plus a uniqueness guarantee per document.
-- Not idempotent: fails after a fresh init.sql (column "body" does not exist).
ALTER TABLE chunks RENAME COLUMN body TO content;
ALTER TABLE chunks ADD CONSTRAINT chunks_document_chunk_uniq UNIQUE (document_id, chunk_index);
