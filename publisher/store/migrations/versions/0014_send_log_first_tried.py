"""When each send-log row was first made: retries give up [delivery].give_up_after from then, not from the issue's start

With the warm-up an issue is routinely still sending a week after it started; a recipient first tried on its sixth
day was given up at once as undeliverable (and counted a soft bounce), because the give-up clock was the issue's.
Rows made before this migration have none and keep the issue's start.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('send_log') as batch:
        batch.add_column(sa.Column('first_tried_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('send_log') as batch:
        batch.drop_column('first_tried_at')
