"""Initial layout of the documents collection: id, text, metadata, dense, sparse, ColBERT.

Revision ID: 0001_initial
Revises: (base)

Every layout parameter is stated below, in this text: what this revision creates must not change when
CollectionLayout's defaults or the MEE_* settings do (the ColBERT codec default moved from fp16 to int8
once; a deployment created since then must get what this script says, not what the library says today).
"""

revision = "0001_initial"
down_revision = None

# Checksums of earlier texts of this script that did the same thing, so a history recorded with one of them
# is not drift (milvus_embed_ext/migrations/script.py). The one earlier text called op.layout(truncated=())
# and took the rest from CollectionLayout's defaults, which are the values below. (Before int8 became the
# default, that text created fp16 collections; those keep fp16, as their description and history record.)
REPLACES_CHECKSUMS = (
    "8a940c07020f495ffe7c41b4aae90762ed728f1d1982932eb20ae764ae4a0a08",
)

# The layout this revision creates: every CollectionLayout parameter but the name and the dense width.
LAYOUT = {
    "colbert_codec": "int8",  # ColBERT token vectors: 1 byte per dimension plus a scale per token
    "index_type": "auto",  # dense fields: the backend's default index, resolved when the revision is applied
    "colbert": "auto",  # native multi-vector field when the server has one, else the companion collection
    "store_text": True,  # keep each text, so a later revision can re-encode it (reencode)
    "truncated": (),  # no truncated dense fields yet (0002 adds dense_256)
    "max_id_length": 512,  # VARCHAR length of the primary key
}


def upgrade(op):
    # The name is the migrated collection's (op.collection). The dense width is not stated: it is the served
    # model's (op.dense_dim, from the migration config's model), because the collection must hold that
    # model's vectors; the history records the width it resolved to, and later revisions read it from there.
    op.create_collection(op.layout(**LAYOUT))


# No downgrade(): the engine reverses upgrade() (drop_collection).
