"""The fleet: each issue's compiled variants for every worker, the live workers, one shared send rate, and an index of
the subscribers who are not active (the coordinator asks, every second, whether pending rows are still wanted)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('issue_variants',
    sa.Column('issue_id', sa.String(length=100), nullable=False),
    sa.Column('topics', sa.String(length=2000), nullable=False),
    sa.Column('is_empty', sa.Boolean(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('issue_id', 'topics', name=op.f('pk_issue_variants'))
    )
    op.create_table('workers',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('rate', sa.Float(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workers'))
    )
    op.create_index('ix_subscribers_inactive', 'subscribers', ['id'], postgresql_where=sa.text("status <> 'active'"),
                    sqlite_where=sa.text("status <> 'active'"))
    op.create_table('rate_buckets',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('tat', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_rate_buckets'))
    )


def downgrade() -> None:
    op.drop_table('rate_buckets')
    op.drop_index('ix_subscribers_inactive', table_name='subscribers')
    op.drop_table('workers')
    op.drop_table('issue_variants')
