"""One home per model kind (``classify``, ``patch``, ``segdec``, ``probe``): see :mod:`transfer.heads.base`.

Importing the package registers the built-in heads; a new kind registers itself with :func:`register_head`.
"""

from transfer.heads.base import Head, get_head, head_name, head_of, list_heads, register_head
from transfer.heads.classify import ClassifyHead
from transfer.heads.patch import PatchHead
from transfer.heads.probe import ProbeHead
from transfer.heads.segdec import SegdecHead

register_head(ClassifyHead())
register_head(PatchHead())
register_head(SegdecHead())
register_head(ProbeHead())

__all__ = ["Head", "get_head", "head_name", "head_of", "list_heads", "register_head"]
