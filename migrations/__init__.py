"""milvus-embed's own revision scripts (the wheel ships this folder as ``milvus_embed_ext.migrations_builtin``).

Scripts are loaded by path, one by one; this file only makes the folder a package for setuptools.
Files starting with ``_`` are not revisions.
"""
