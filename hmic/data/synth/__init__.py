"""`hmic synth`: render a realistic OpenMIC-format stand-in dataset from a General MIDI SoundFont.

Each clip is a short piece of music arranged for an ensemble (rock band, jazz combo, string quartet,
...): a key, a tempo, a chord progression, and one part per instrument (bass line, chords, melody,
arpeggio, groove). The subpackage has one module per concern:

- ``arrange``: the music (ensembles, voices, parts, notes): plans, no audio;
- ``render``: each part to its own stem with tinysoundfont, stems mixed, audibility measured;
- ``dataset``: every clip planned, rendered and labelled OpenMIC-style, written in the OpenMIC layout;
- ``song``: a longer piece of changing ensembles for ``hmic predict``.

Nothing downstream knows the data is synthetic: the output is the OpenMIC-2018 layout.
"""
