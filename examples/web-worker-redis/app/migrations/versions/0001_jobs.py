"""jobs: what was asked, and when it was done"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("done_by", sa.Text),
        sa.Column("done", sa.DateTime(timezone=True)),
    )


def downgrade():
    op.drop_table("jobs")
