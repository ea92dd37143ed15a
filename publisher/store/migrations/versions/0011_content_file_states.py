"""Content files as last read (stat, hash of the bytes, what they gave): an ingest skips files that did not change

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('content_files',
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('item_id', sa.String(length=200), nullable=False),
    sa.Column('item_hash', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=False),
    sa.Column('ctime_ns', sa.BigInteger(), nullable=False),
    sa.Column('file_id', sa.String(length=60), nullable=False),
    sa.Column('read_ns', sa.BigInteger(), nullable=False),
    sa.Column('file_hash', sa.String(length=64), nullable=False),
    sa.Column('settings', sa.String(length=64), nullable=False),
    sa.Column('image_src', sa.Text(), nullable=True),
    sa.Column('image_rel', sa.Text(), nullable=True),
    sa.Column('warnings', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('source', 'path', name=op.f('pk_content_files'))
    )


def downgrade() -> None:
    op.drop_table('content_files')
