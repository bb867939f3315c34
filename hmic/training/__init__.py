"""Training runs: what defines a run (``config``), the data it trains on (``data``), augmentation
(``augment``), fine-tuning the whole network (``finetune``), the frozen-backbone protocol (``embed``
caches the backbone's embeddings once, ``frozen`` trains heads on them, several at once), and the grid of
runs with its executors (``grid``, ``ray_engine``).
May import: everything below it (core, ``hmic.audio``, ``hmic.data``, ``hmic.models``, ``hmic.runs``,
``hmic.evaluation``); never ``hmic.tagging`` or ``hmic.cli``.
"""
