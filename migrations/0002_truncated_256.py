"""Add the truncated 256-d dense field, backfilled from the stored full dense vectors.

Revision ID: 0002_dense_256
Revises: 0001_initial

The backfill re-derives each row's prefix from its stored dense vector (renormalised), so no text is
re-encoded. Models whose dense width is 256 or less have no room for a prefix: there the revision
records itself and changes nothing. Its parameters are stated below, not taken from op defaults.
"""

revision = "0002_dense_256"
down_revision = "0001_initial"

# Checksums of earlier texts of this script that did the same thing, so a history recorded with one of them
# is not drift (milvus_embed_ext/migrations/script.py). The one earlier text stated the same dim and projection.
REPLACES_CHECKSUMS = (
    "e3e1e36f38940c0e6f5381f07902d2aa8248a7a7236a1bbdfbd82822406d3371",
)

# The truncated field this revision adds. The dense width it is cut from is the collection's (op.dense_dim:
# what 0001 resolved from the served model and the history recorded), so the field exists only where it fits.
DIM = 256
PROJECTION = "prefix"  # the first DIM components, renormalised (what the encoder returns for truncated dims)


def upgrade(op):
    if op.dense_dim > DIM:
        op.add_truncated_dense(DIM, projection=PROJECTION)


def downgrade(op):
    if op.dense_dim > DIM:
        op.drop_truncated_dense(DIM)
