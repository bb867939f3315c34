"""The run folder: one trained (method, λ, seed), its layout and files (``run``): the resolved config,
``metrics.jsonl``, checkpoints, saved predictions, thresholds and the end-of-run marker; and choosing
λ among finished runs on validation (``selection``).

Everything that reads or writes a run folder goes through ``Run``; nothing else knows the file names.
``provenance``: which code, machine and command made each training session (``provenance.json``), and the
warning when combined runs come from different code; ``listing``: where every run under a folder stands
(``hmic runs``).
May import: the top-level core modules, ``hmic.audio``, ``hmic.data`` and ``hmic.models``.
"""
