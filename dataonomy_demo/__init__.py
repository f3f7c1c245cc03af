"""The top layer: ``dataonomy demo`` runs curation (:mod:`dataonomy`) and training and inspection
(:mod:`transfer`) end to end on built-in synthetic data.

Layers only point down: ``dataonomy`` (curation, with the shared helpers: errors, io, devices) <- ``transfer``
(training and inspection) <- ``dataonomy_demo`` and the examples. The ``dataonomy`` command is this package's
:mod:`dataonomy_demo.cli`: dataonomy's own commands plus ``demo``, which needs both packages.
"""
