"""A broken revision (release 0.6.3-badmigration): creates a table, then fails.

It renames a column that does not exist. Run in the same transaction as the table it created,
the failure undoes that too: `memory_links` never exists and `alembic_version` stays where it was.

Revision ID: 005
Revises: 004
"""

from alembic import op

revision = "005"
down_revision = "004"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE TABLE memory_links (source bigint NOT NULL, target bigint NOT NULL)")
    op.execute("ALTER TABLE memories RENAME COLUMN weight TO link_weight")


def downgrade():
    op.execute("DROP TABLE IF EXISTS memory_links")
