"""Datasets on disk: the OpenMIC-2018 layout (``openmic``), fetching it and the CNN14 checkpoint
(``download``), the validation split (``split``), importing your own labelled audio (``ingest``), the
instrument hierarchy (``hierarchy``, with the default ``hierarchy.yaml`` beside it), the feature store that
training reads (``features``) and the rendered stand-in dataset (``synth``).

A new dataset importer goes here: it writes the OpenMIC layout, and nothing downstream knows where the
data came from.
Hierarchies of any depth (trees and DAGs, their file forms and targets) are ``taxonomy``, with the bundled
taxonomies in ``taxonomies/`` (not yet used by training; issue 34).
May import: the top-level core modules and ``hmic.audio``.
"""
