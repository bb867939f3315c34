"""Audio before the model: decoding any file to 16-kHz mono windows (``decoding``) and the exact CNN14
log-mel front-end (``logmel``).

Owns: the sample rate, window length and front-end settings (``FrontendConfig``), decoding errors.
May import: the top-level core modules (``hmic.errors``, ``hmic.fileio``, ``hmic.registry``, ``hmic.devices``).
"""
