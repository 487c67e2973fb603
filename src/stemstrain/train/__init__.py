"""Training of the spot network: one code path for 1 process, N processes, N nodes.

- :mod:`~stemstrain.train.loop`: :func:`train`, the steps of a DDP model, checkpoints, the exported model;
- :mod:`~stemstrain.train.data`: the training set, checked once, read batch by batch, split by strain state;
- :mod:`~stemstrain.train.augment`: dose thinning, shift and ellipticity moving the target with the pattern;
- :mod:`~stemstrain.train.metrics`: validation loss and spots, read out as inference reads them;
- :mod:`~stemstrain.train.logs`: rank 0's metrics.csv, steps.csv and curves.png;
- :mod:`~stemstrain.train.ddp`: the process group (torchrun's variables, or a world of one).
"""

from stemstrain.train.loop import train

__all__ = ["train"]
