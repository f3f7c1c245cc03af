"""Names of the built-in registered components, for the command lines' help texts: reading them from the
registries would import torch and torchvision, and `--help` must answer in well under a second.
tests/test_cli_startup.py checks each tuple against its registry, so they cannot drift."""

#: :mod:`dataonomy.datasets` readers (``get_dataset``)
DATASETS = ("dagm", "folder", "imagenet", "kolektor", "mvtec", "pairs")
#: :mod:`dataonomy.affinity` measures (``get_affinity``)
AFFINITIES = ("frechet", "gaussian", "prototype", "softmax")
#: :mod:`dataonomy.backbones` feature extractors (``get_backbone_spec``)
BACKBONES = ("efficientnet_lite0", "inception_v3", "resnet50")
