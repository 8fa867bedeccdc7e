"""Scope memories to a tenant and project (existing rows go to the default ones).

Revision ID: 002
Revises: 001
"""

from alembic import op

revision = "002"
down_revision = "001"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("ALTER TABLE memories ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'")
    op.execute("ALTER TABLE memories ADD COLUMN project_id text NOT NULL DEFAULT 'default'")
    op.execute("CREATE INDEX ix_memories_scope ON memories (tenant_id, project_id)")


def downgrade():
    op.execute("DROP INDEX ix_memories_scope")
    op.execute("ALTER TABLE memories DROP COLUMN project_id")
    op.execute("ALTER TABLE memories DROP COLUMN tenant_id")
