"""Per-tag decision thresholds: tuned on validation for one clip (``tune_thresholds``: each tag's F1-best
cut) and for the max over a song's windows (``tune_song_thresholds``, on pseudo-songs of validation
clips), and read back for a file (``TagThresholds``: the clip thresholds for one window and for mean
aggregation, the song thresholds of the nearest pseudo-song length for the max over several windows;
docs/tagging.md, "Song-level thresholds"). Tuning scores with scikit-learn's precision-recall curve.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hmic.errors import HmicError
from hmic.data.hierarchy import Hierarchy
from hmic.runs.run import LEVELS



DEFAULT_THRESHOLD = 0.5  # for a tag without observed positives (or negatives) in validation


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """One threshold per tag maximising that tag's F1 on observed entries (predict p >= t).

    probs, targets, mask: (N, K). Returns (thresholds (K,), tags that kept DEFAULT_THRESHOLD because
    validation had no observed positive or no observed negative for them).
    """
    k = probs.shape[1]
    thresholds = np.full(k, DEFAULT_THRESHOLD, dtype=np.float64)
    defaulted = []
    for j in range(k):
        obs = mask[:, j].astype(bool)
        y, p = targets[obs, j] > 0.5, probs[obs, j].astype(np.float64)
        if y.sum() == 0 or (~y).sum() == 0:
            defaulted.append(j)
            continue
        from sklearn.metrics import precision_recall_curve

        precision, recall, cut = precision_recall_curve(y, p)
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        thresholds[j] = float(cut[int(np.argmax(f1))])
    return thresholds, defaulted


# Song-level calibration: thresholds for the maximum over a song's windows, tuned on pseudo-songs of
# validation clips. A pseudo-song of k clips is positive for a tag when one of its clips is an observed
# positive (the others drawn from all validation clips), negative when all k clips are observed
# negatives; positive and negative songs come in the tag's observed validation proportion.
SONG_CLIPS = (2, 4, 8, 16)  # pseudo-song lengths in clips; a song uses the nearest to its duration / clip
SONG_SAMPLES = 400  # pseudo-songs per tag and length


def tune_song_thresholds(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, n_clips: int,
                         seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """One threshold per tag for the max over ``n_clips`` clips. probs, targets, mask: (N, K) of
    validation clips. Returns (thresholds (K,), tags that kept DEFAULT_THRESHOLD for lack of observed
    positives or negatives)."""
    rng = np.random.default_rng([seed, n_clips])
    n, k = probs.shape
    thresholds = np.full(k, DEFAULT_THRESHOLD, dtype=np.float64)
    defaulted = []
    for j in range(k):
        obs = mask[:, j].astype(bool)
        pos, neg = np.where(obs & (targets[:, j] > 0.5))[0], np.where(obs & (targets[:, j] <= 0.5))[0]
        if len(pos) == 0 or len(neg) == 0:
            defaulted.append(j)
            continue
        n_pos = int(np.clip(round(SONG_SAMPLES * len(pos) / (len(pos) + len(neg))), 1, SONG_SAMPLES - 1))
        pos_songs = np.concatenate([rng.choice(pos, (n_pos, 1)), rng.integers(0, n, (n_pos, n_clips - 1))], axis=1)
        neg_songs = rng.choice(neg, (SONG_SAMPLES - n_pos, n_clips))
        scores = probs[np.concatenate([pos_songs, neg_songs]), j].max(axis=1)
        labels = np.concatenate([np.ones(n_pos), np.zeros(SONG_SAMPLES - n_pos)])
        thresholds[j] = tune_thresholds(scores[:, None], labels[:, None], np.ones((SONG_SAMPLES, 1), bool))[0][0]
    return thresholds, defaulted


def song_clips_for(duration_seconds: float, clip_seconds: float) -> int:
    """The pseudo-song length (in clips) whose thresholds fit a file of this duration."""
    clips = max(duration_seconds / clip_seconds, 1.0)
    return min(SONG_CLIPS, key=lambda c: abs(np.log2(c) - np.log2(clips)))


# Beyond the paper: what a hierarchical head is supposed to buy, and how well its probabilities are
# calibrated (docs/evaluation.md, "Is the difference real?").


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
