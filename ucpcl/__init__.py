"""Uncertainty-guided pixel contrastive learning for semi-supervised medical image segmentation, literate-programmed

Modules:

- `ucpcl.console`: The `ucpcl` console script: passive OpenMP waiting (unless the user chose), then `ucpcl.cli.main`."""

__version__ = "0.1.0"
