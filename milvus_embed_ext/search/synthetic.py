"""Moved to :mod:`milvus_embed_ext.devtools.synthetic` (a dev-only tool); this name stays for old imports."""

from ..devtools.synthetic import *  # noqa: F403
from ..devtools.synthetic import __all__  # noqa: F401
