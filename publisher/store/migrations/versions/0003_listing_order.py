"""A stored listing date (the publication date, or the first-seen time when there is none)

Feeds and pages list newest first by it. Computing coalesce(published_at, first_seen_at) in
ORDER BY forced a full scan and sort per feed. With the date stored, and copied into
publication_topics, the newest items of everything, of a content type and of a topic each come
straight off an index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('publications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('listed_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE publications SET listed_at = COALESCE(published_at, first_seen_at)")
    with op.batch_alter_table('publications', schema=None) as batch_op:
        batch_op.alter_column('listed_at', existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.create_index(batch_op.f('ix_publications_listed_at'), ['listed_at'], unique=False)
        batch_op.create_index('ix_publications_type_listing', ['content_type', 'listed_at', 'id'], unique=False)
    with op.batch_alter_table('publication_topics', schema=None) as batch_op:
        batch_op.add_column(sa.Column('listed_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE publication_topics SET listed_at = (SELECT listed_at FROM publications WHERE publications.id = publication_topics.publication_id)")
    with op.batch_alter_table('publication_topics', schema=None) as batch_op:
        batch_op.alter_column('listed_at', existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.create_index('ix_publication_topics_listing', ['topic_slug', 'listed_at', 'publication_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('publication_topics', schema=None) as batch_op:
        batch_op.drop_index('ix_publication_topics_listing')
        batch_op.drop_column('listed_at')
    with op.batch_alter_table('publications', schema=None) as batch_op:
        batch_op.drop_index('ix_publications_type_listing')
        batch_op.drop_index(batch_op.f('ix_publications_listed_at'))
        batch_op.drop_column('listed_at')
