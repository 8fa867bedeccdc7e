-- v2_004 (shipped only in 0.3.0-broken): fails HALFWAY on every database.
-- The first statements succeed (a new table + a column), then an index names a column that
-- does not exist. Run in one transaction, nothing of it may remain afterwards: neither the
-- table document_tags nor the column documents.language.
CREATE TABLE document_tags (
    document_id  BIGINT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    tag          TEXT NOT NULL,
    PRIMARY KEY (document_id, tag)
);
ALTER TABLE documents ADD COLUMN language TEXT;
CREATE INDEX document_tags_label_idx ON document_tags (label);
