"""APScheduler's job table is made by the migrations, under their lock, not by APScheduler on first use

APScheduler's SQLAlchemy job store creates its table when it starts ("CREATE TABLE" after a look that finds none).
Two processes starting at once on one PostgreSQL schema (`publisher run` taking the lease while `publisher status`
reads the next runs) could both look, both create, and one failed with a duplicate key in pg_type. Made here, the
table exists before any job store starts, and the job store's own look finds it. The columns are APScheduler 3's
(id, next_run_time, job_state); a store whose scheduler already ran keeps the table it has.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

TABLE = 'apscheduler_jobs'  # publisher.scheduler.JOBS_TABLE


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table(TABLE):
        return
    # The names are the ones APScheduler's own CREATE would give (its MetaData has no naming convention).
    op.create_table(TABLE,
    sa.Column('id', sa.Unicode(length=191), nullable=False),
    sa.Column('next_run_time', sa.Float(precision=25), nullable=True),
    sa.Column('job_state', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=f'{TABLE}_pkey'),
    )
    op.create_index(f'ix_{TABLE}_next_run_time', TABLE, ['next_run_time'])


def downgrade() -> None:
    op.drop_index(f'ix_{TABLE}_next_run_time', table_name=TABLE)
    op.drop_table(TABLE)
