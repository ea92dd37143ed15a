"""Delivery that finishes by itself: when a deferred row is due again, why the last try failed (its kind),
soft bounces counted across issues, and which process holds a send run (liveness is its lock, not a heartbeat)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('send_log') as batch:
        batch.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('kind', sa.String(length=10), nullable=True))
        batch.add_column(sa.Column('deferrals', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('subscribers') as batch:
        batch.add_column(sa.Column('soft_bounces', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('send_runs') as batch:
        batch.add_column(sa.Column('holder', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('send_runs') as batch:
        batch.drop_column('holder')
    with op.batch_alter_table('subscribers') as batch:
        batch.drop_column('soft_bounces')
    with op.batch_alter_table('send_log') as batch:
        batch.drop_column('deferrals')
        batch.drop_column('kind')
        batch.drop_column('next_attempt_at')
