"""Datasets on disk: the OpenMIC-2018 layout (``openmic``), fetching it and the CNN14 checkpoint
(``download``), the validation split (``split``), importing your own labelled audio (``ingest``), the
instrument hierarchy (``hierarchy``, with the default ``hierarchy.yaml`` beside it), the feature store that
training reads (``features``) and the rendered stand-in dataset (``synth``).

A new dataset importer goes here: it writes the OpenMIC layout, and nothing downstream knows where the
data came from.
May import: the top-level core modules and ``hmic.audio``.
"""
