"""Send runs with heartbeats; the send log counts attempts and knows which run holds a row

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('send_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_send_log_issue_status', ['issue_id', 'status'], unique=False)
    op.create_table('send_runs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('issue_id', sa.String(length=100), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_send_runs'))
    )


def downgrade() -> None:
    op.drop_table('send_runs')
    with op.batch_alter_table('send_log', schema=None) as batch_op:
        batch_op.drop_index('ix_send_log_issue_status')
        batch_op.drop_column('claimed_by')
        batch_op.drop_column('attempts')
