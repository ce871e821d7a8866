"""Modality reliance: what the answer loses when the sound, or the frames, are taken away.

The study finds that audio and video feed the question "in proportion to the task's
reliance on each modality". Reliance is measured here directly, per sample, by asking
the same question three times:

=============  =================================================================
condition      input
=============  =================================================================
``both``       the clip with its sound track (the benchmark's input)
``no_audio``   the same clip without its sound (``use_video_audio=False``)
``no_video``   the same sound without the frames (the clip's audio track alone)
=============  =================================================================

and recording the answer and the correct letter's probability of each, with ``dp``
against ``both``. A task that relies on a modality loses accuracy and probability when
that modality is removed; `paper_figures` sets this beside the knockout contributions of
audio -> question and video -> question per task. A sample whose clip has no sound has
no audio to remove: its ``no_audio`` record is flagged (``applies`` false, a reason, no
numbers), never counted as "removed, no change".
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Iterable, Iterator

from pydantic import BaseModel, ConfigDict

from avmech.errors import InputError
from avmech.flows.common import GroupExpr, answer_fields, has_group, prepared_samples, sample_fields
from avmech.sample import AVSample

if TYPE_CHECKING:
    from avmech.models.base import AVModel


class ModalityParams(BaseModel):
    """``audio``: the group that holds the sound in the full input (its absence means nothing to remove)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    audio: GroupExpr = "audio_tokens"


def without(s: AVSample, modality: str) -> AVSample:
    """``s`` without its sound (``"audio"``) or without its frames (``"video"``)."""
    if s.video is None or s.items:
        raise InputError(f"sample {s.id!r}: modality reliance needs an audio-visual clip (video=), not items or audio "
                         "alone: run it on av-speakerbench or worldsense")
    if modality == "audio":
        return dataclasses.replace(s, audio=None, use_video_audio=False, id=f"{s.id}#no_audio")
    sound = s.audio if s.audio is not None else s.video  # a clip's own sound track, read from the file
    return dataclasses.replace(s, video=None, audio=sound, use_video_audio=False, fps=None, id=f"{s.id}#no_video")


def modality_reliance(m: AVModel, samples: Iterable[AVSample], params: ModalityParams) -> Iterator[dict]:
    """Three records per sample: ``both``, ``no_audio`` and ``no_video`` (see the module docstring)."""
    for s, p in prepared_samples(m, samples, "modality reliance"):
        fields = sample_fields(s)
        base = m.run(p)
        yield {**fields, "condition": "modality|both", "input": "both", "applies": True, "n_tokens": len(p),
               **answer_fields(base)}
        for removed, group in (("audio", params.audio), ("video", "video")):
            record = {**fields, "condition": f"modality|no_{removed}", "input": f"no_{removed}"}
            if not has_group(p, group):
                yield {**record, "applies": False,
                       "skip_reason": f"the input has no {group!r} positions: there is no {removed} to remove"}
                continue
            q = m.prepare(without(s, removed))
            left = q.tokens.group(group)
            if len(left):
                raise InputError(f"sample {fields['sample_id']!r}: {len(left)} {group!r} positions remain after "
                                 f"removing the {removed}")
            yield {**record, "applies": True, "n_tokens": len(q), **answer_fields(m.run(q), base)}
