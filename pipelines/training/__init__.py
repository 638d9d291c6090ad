"""The trainer (``lungseg train``), one job per module.

* `pipelines.training.data`: discovery, split, preprocessing cache, the patch feed.
* `pipelines.training.model`: strategy, U-Net, schedule, optimizer, loss, precision.
* `pipelines.training.validation`: lesion-level validation, the "best" ordering.
* `pipelines.training.callbacks`: the run's Keras callbacks, one job each.
* `pipelines.training.checkpoint`: the atomic epoch commit, resume state, history.
* `pipelines.training.run`: `train`, the ``model.fit`` wiring.

`pipelines.train` re-exports the public names.
"""
