"""Transfer: pretrain on a Dataonomy manifest, fine-tune on the target, evaluate, localise defects."""

__version__ = "0.1.0"
