"""Add the truncated 256-d dense field, backfilled from the stored full dense vectors.

Revision ID: 0002_dense_256
Revises: 0001_initial

The backfill re-derives each row's prefix from its stored dense vector (renormalised), so no text is
re-encoded. Models whose dense width is 256 or less have no room for a prefix: there the revision
records itself and changes nothing.
"""

revision = "0002_dense_256"
down_revision = "0001_initial"

DIM = 256


def upgrade(op):
    if op.dense_dim > DIM:
        op.add_truncated_dense(DIM, projection="prefix")


def downgrade(op):
    if op.dense_dim > DIM:
        op.drop_truncated_dense(DIM)
