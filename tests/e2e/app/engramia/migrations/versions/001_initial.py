"""Initial schema: pgvector, tenants, projects, api_keys, memories (with an importance column).

Revision ID: 001
Revises:
"""

from alembic import op

revision = "001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("""
        CREATE TABLE tenants (
            id text PRIMARY KEY,
            name text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("""
        CREATE TABLE projects (
            id text PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants (id),
            name text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("""
        CREATE TABLE api_keys (
            id text PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants (id),
            project_id text NOT NULL REFERENCES projects (id),
            name text NOT NULL,
            key_prefix text NOT NULL,
            key_hash text NOT NULL UNIQUE,
            role text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        )""")
    op.execute("""
        CREATE TABLE memories (
            id bigserial PRIMARY KEY,
            content text NOT NULL,
            importance real,
            embedding vector(8),
            created_at timestamptz NOT NULL DEFAULT now()
        )""")


def downgrade():
    op.execute("DROP TABLE memories")
    op.execute("DROP TABLE api_keys")
    op.execute("DROP TABLE projects")
    op.execute("DROP TABLE tenants")
