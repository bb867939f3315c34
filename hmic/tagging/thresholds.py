"""Which thresholds read a file's probabilities: the clip thresholds for one window (and for mean
aggregation), the song thresholds of the nearest pseudo-song length for the max over several windows
(docs/tagging.md, "Song-level thresholds")."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hmic.errors import HmicError
from hmic.data.hierarchy import Hierarchy
from hmic.evaluation.metrics import SONG_CLIPS, song_clips_for
from hmic.runs.run import LEVELS


@dataclass
class TagThresholds:
    clip: dict[str, np.ndarray]  # level -> (K,): for one window (clip)
    song: dict[str, np.ndarray] | None  # level -> (len(SONG_CLIPS), K): for the max over a song's windows
    clip_seconds: float
    # level -> {tag: why} for the tags without a threshold ("not trained": never present in predictions)
    not_trained: dict[str, dict[str, str]] = field(default_factory=dict)

    def untrained(self, level: str, names: list[str]) -> np.ndarray:
        """(K,) bool: which of ``names`` at ``level`` are not trained."""
        return np.array([n in self.not_trained.get(level, {}) for n in names], dtype=bool)

    @classmethod
    def from_stored(cls, thresholds: dict, hierarchy: Hierarchy, clip_seconds: float, source: str) -> "TagThresholds":
        """``thresholds``: as stored by tune-thresholds ({"fine": {tag: t}, "coarse": …, "song": …})."""
        levels = dict(zip(LEVELS, (hierarchy.fine_names, hierarchy.coarse_names)))
        try:
            clip = {level: np.array([thresholds[level][n] for n in names]) for level, names in levels.items()}
        except KeyError as e:
            raise HmicError(f"{source}: its thresholds have no entry for {e}; re-run 'hmic tune-thresholds'") from None
        stored = thresholds.get("song")
        song = None
        if stored is not None and tuple(stored.get("clips", ())) == SONG_CLIPS:
            song = {level: np.array([stored[level][n] for n in names]).T for level, names in levels.items()}
        return cls(clip, song, clip_seconds, not_trained_of(thresholds))

    def for_file(self, seconds: float, windows: int, aggregate: str = "max") -> tuple[dict[str, np.ndarray], str]:
        """The thresholds for ``windows`` windows spanning ``seconds``, aggregated by ``aggregate``: the
        clip thresholds for one window (or for mean aggregation, or a run tuned without song thresholds),
        else the song thresholds of the nearest pseudo-song length. Returns (level -> (K,), what they are)."""
        if windows <= 1 or aggregate != "max" or self.song is None:
            return self.clip, "clip"
        clips = song_clips_for(seconds, self.clip_seconds)
        i = SONG_CLIPS.index(clips)
        return {level: t[i] for level, t in self.song.items()}, f"song ({clips} clips)"


def not_trained_of(thresholds: dict) -> dict[str, dict[str, str]]:
    """The tags without a threshold: tune-thresholds' ``not_trained``, or, for thresholds tuned by an older
    hmic, its ``defaulted`` tags (no positive or no negative validation label); none if neither is stored."""
    if "not_trained" in thresholds:
        return {level: dict(tags) for level, tags in thresholds["not_trained"].items()}
    return {level: {t: "no positive or no negative validation label" for t in tags}
            for level, tags in (thresholds.get("defaulted") or {}).items()}
