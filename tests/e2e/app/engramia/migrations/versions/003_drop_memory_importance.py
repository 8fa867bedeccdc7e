"""Drop memories.importance (never used by the API).

The downgrade adds the column back, empty: the values it held are gone with the upgrade (restore
the pre-migration backup to get them back).

Revision ID: 003
Revises: 002
"""

from alembic import op

revision = "003"
down_revision = "002"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("ALTER TABLE memories DROP COLUMN importance")


def downgrade():
    op.execute("ALTER TABLE memories ADD COLUMN importance real")
