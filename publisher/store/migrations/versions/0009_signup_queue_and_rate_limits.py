"""The sign-up queue, the shared rate-limit slots, and the confirmation nonce bound into each confirmation link

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('subscribers') as batch:
        batch.add_column(sa.Column('confirm_nonce', sa.String(length=32), nullable=True))
    op.create_table('signup_requests',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('topics', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('subscriber_id', sa.Integer(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claimed_by', sa.String(length=64), nullable=True),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signup_requests'))
    )
    op.create_index('ix_signup_requests_status_next', 'signup_requests', ['status', 'next_attempt_at'], unique=False)
    op.create_table('rate_slots',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('slot', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', 'slot', name=op.f('pk_rate_slots'))
    )
    op.create_index(op.f('ix_rate_slots_expires_at'), 'rate_slots', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_rate_slots_expires_at'), table_name='rate_slots')
    op.drop_table('rate_slots')
    op.drop_index('ix_signup_requests_status_next', table_name='signup_requests')
    op.drop_table('signup_requests')
    with op.batch_alter_table('subscribers') as batch:
        batch.drop_column('confirm_nonce')
