"""Tags on memories (release 0.6.2): a JSON array, empty for the rows written before.

Revision ID: 004
Revises: 003
"""

from alembic import op

revision = "004"
down_revision = "003"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("ALTER TABLE memories ADD COLUMN tags jsonb NOT NULL DEFAULT '[]'::jsonb")
    op.execute("CREATE INDEX ix_memories_tags ON memories USING gin (tags)")


def downgrade():
    op.execute("DROP INDEX ix_memories_tags")
    op.execute("ALTER TABLE memories DROP COLUMN tags")
