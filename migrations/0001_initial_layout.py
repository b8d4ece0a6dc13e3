"""Initial layout of the documents collection: id, text, metadata, dense, sparse, ColBERT.

Revision ID: 0001_initial
Revises: (base)
"""

revision = "0001_initial"
down_revision = None


def upgrade(op):
    # op.layout() is the default layout for Settings.collection with the model's dense width,
    # the configured ColBERT codec and index type; no truncated fields yet.
    op.create_collection(op.layout(truncated=()))


# No downgrade(): the engine reverses upgrade() (drop_collection).
