"""Dataonomy: select the source classes that best prepare a model for a target task.

Stages (see METHOD.md): datasets -> features -> affinity -> ahp -> bip -> manifest/taxonomy.
"""

__version__ = "0.1.0"
