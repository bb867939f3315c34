"""Scores of finished runs: the paper's metrics and the hierarchy-aware ones, with the sample-weighted,
vectorised forms the bootstrap uses (``metrics``), per-tag thresholds tuned and read back
(``thresholds``), which marks follow the hierarchy (``decision``), scoring runs (``scoring``), paired significance over seeds and clips (``significance``) and Table 1 with
the paper's figures (``report``).

A new metric goes in ``metrics`` (tested against scikit-learn where scikit-learn has it); the metrics for
taxonomies of any depth (per depth, pooled AU(PRC), hierarchical P/R/F1, coherence) are ``hierarchical``.
May import: the top-level core modules, ``hmic.data``, ``hmic.models`` and ``hmic.runs``; never
``hmic.training``.
"""
