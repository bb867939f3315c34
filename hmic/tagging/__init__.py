"""Tagging audio files of any length: sliding windows → batched model → song-level fine and coarse tags.

The modules, in the order a file goes through them: ``inputs`` (files and folders to tag),
``workers`` (decoding, resampling, windows and log-mel in worker processes), ``batching`` (windows of
several files share each forward pass),
``results`` (a file's result, the JSON schema, and the writers), ``tagger`` (``FileTagger``: a run
made ready to tag), ``truth`` (a song against its ground truth), ``library`` (``tag_files``: what
``hmic predict`` does, with resume, label tracks and truth comparison). Beside them: ``export`` (a run as
one ONNX graph) and ``onnxrun`` (tagging over onnxruntime, without torch). Importing it imports no torch.

A new output format goes in ``results``.
May import: everything below it (core, ``hmic.audio``, ``hmic.data``, ``hmic.models``, ``hmic.runs``,
``hmic.evaluation``); never ``hmic.training`` or ``hmic.cli``.
"""

from hmic.tagging.inputs import AUDIO_SUFFIXES, AudioInputs, expand_inputs
from hmic.tagging.library import TaggingPlan, TaggingReport, plan_tagging, run_tagging, tag_files
from hmic.tagging.results import label_track
from hmic.tagging.tagger import DEFAULT_AGGREGATE, DEFAULT_BATCH_SIZE, DEFAULT_HOP_SECONDS, FileTagger

__all__ = ["AUDIO_SUFFIXES", "AudioInputs", "expand_inputs", "TaggingPlan", "TaggingReport", "plan_tagging",
           "run_tagging", "tag_files", "label_track", "DEFAULT_AGGREGATE", "DEFAULT_BATCH_SIZE",
           "DEFAULT_HOP_SECONDS", "FileTagger"]
