"""What a researcher feeds a model: one multiple-choice question over audio-visual media.

The study uses two input configurations, and `AVSample` covers both:

1. *Audio-visual video*: one clip (``video=``) whose own sound track is used, or an
   explicit ``audio=`` beside it; audio-only and video-only variants drop one stream.
2. *Interleaved items* (AV-Odyssey style): several audio clips and images (``items=``)
   placed where the question names them (``[img1]``, ``[audio2]``, ...), each a
   candidate or the reference.

Media may be paths or arrays. Nothing is decoded here: models decode, sample and size
media by their own released rules in ``prepare``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from avmech.errors import InputError

LETTERS = "ABCDEFGHIJ"
Media = str | Path | np.ndarray


@dataclass(frozen=True)
class Item:
    """One image or audio clip of an interleaved prompt.

    ``role`` says what the study calls it: one of the ``candidate`` s the answer picks
    from, or the ``reference`` they are matched against. ``tag`` is the placeholder in
    the question text where the item goes (``[img1]``, ``[audio1]``).
    """

    kind: Literal["image", "audio"]
    data: Media
    tag: str
    role: Literal["candidate", "reference"] = "candidate"
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("image", "audio"):
            raise InputError(f"Item kind {self.kind!r} is not supported: use 'image' or 'audio'")
        if self.role not in ("candidate", "reference"):
            raise InputError(f"Item role {self.role!r} is unknown: use 'candidate' or 'reference'")
        if isinstance(self.data, np.ndarray) and self.kind == "audio" and self.sample_rate is None:
            raise InputError(f"audio item {self.tag} is a waveform without a rate: pass sample_rate=")
        rate = self.sample_rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0):
            raise InputError(f"audio item {self.tag}: sample_rate={rate!r} must be a positive whole number")

    def image(self) -> np.ndarray:
        """The item's image as uint8 RGB ``[H, W, 3]`` (decoded from its file if it is a path)."""
        if isinstance(self.data, np.ndarray):
            return self.data
        path = Path(self.data)
        if not path.exists():
            raise InputError(f"image {self.tag}: file '{path}' does not exist: check the path")
        try:
            return np.array(Image.open(path).convert("RGB"))
        except Exception as e:  # PIL raises many types for unreadable files
            raise InputError(f"image {self.tag}: cannot read '{path}' ({e}): pass a png/jpg file") from e


@dataclass(frozen=True)
class PromptFormat:
    """How the question and its options are written into the user turn.

    The turn is ``intro + <the clip> + preamble + question + sep + option lines + suffix``
    (``intro`` comes before the media, as WorldSense's official prompt has it); option ``i``
    is written ``option_template.format(letter=..., text=...)``.
    """

    intro: str = ""
    preamble: str = ""
    question_prefix: str = ""
    sep: str = "\n"
    option_template: str = "{letter}. {text}"
    option_sep: str = "\n"
    suffix: str = "\nAnswer with the option's letter from the given choices directly."


PROMPT_FORMATS: dict[str, PromptFormat] = {
    "plain": PromptFormat(),
    "av-speakerbench": PromptFormat(
        preamble=(
            "Select the best answer to the following multiple-choice question based on the "
            "video. Respond with only the letter (A, B, C, or D) of the correct option.\n"
        ),
        suffix="\nThe best answer is:",
    ),
    "av-odyssey": PromptFormat(
        option_template="{letter}:{text}",
        suffix="\nAnswer with the option's letter from the given choices directly.",
    ),
    "worldsense": PromptFormat(  # WorldSense's evaluation in VLMEvalKit (its SYS, the clip, FRAMES_TMPL_AUDIO)
        intro=(
            "Carefully watch this video and pay attention to every detail. Based on your observations, "
            "select the best option that accurately addresses the question."
        ),
        preamble=(  # VLMEvalKit's FRAMES_TMPL_AUDIO, its leading and closing line breaks included
            "\nThese are the frames of a video and the corresponding audio. Select the best "
            "answer to the following multiple-choice question based on the video. Respond "
            "with only the letter (A, B, C, or D) of the correct option.\n"
        ),
        question_prefix="Question: ",
        suffix="\nAnswer: ",
    ),
}


@dataclass(frozen=True)
class AVSample:
    """One question over audio-visual media, with its options and the correct one.

    Parameters
    ----------
    video: path to a clip, or a uint8 array ``[frames, H, W, 3]`` (then ``fps=`` is needed).
    audio: path, or a float waveform (then ``sample_rate=``). With a video file and no
        audio, the clip's own sound track is used (``use_video_audio=True``).
    items: images/audio clips for the interleaved configuration, in any order; with
        ``layout="dataset"`` they are placed at their tags in ``question``; with
        ``layout="study"`` the prompt reads ``[candidates][question][reference][options]``,
        as the study fed it (the tags are taken out of the question text).
    options: option texts without letters; ``answer`` is the index of the correct one.
    """

    question: str
    options: tuple[str, ...] = ()
    answer: int | None = None
    video: Media | None = None
    audio: Media | None = None
    fps: float | None = None
    sample_rate: int | None = None
    use_video_audio: bool = True
    items: tuple[Item, ...] = ()
    system: str | None = None
    prompt_format: str | PromptFormat = "plain"
    layout: Literal["dataset", "study"] = "dataset"
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "items", tuple(self.items))
        if self.options and len(self.options) > len(LETTERS):
            raise InputError(f"{len(self.options)} options given; at most {len(LETTERS)} are supported")
        bad = [o for o in (self.question, *self.options) if not isinstance(o, str)]
        if bad:
            raise InputError(f"question and options are text; got {bad[0]!r} ({type(bad[0]).__name__}): pass strings")
        if self.answer is not None and (isinstance(self.answer, bool) or not isinstance(self.answer, (int, np.integer))):
            hint = (f" (for the letter {self.answer!r}: answer={LETTERS.find(self.answer.upper())})"
                    if isinstance(self.answer, str) and len(self.answer) == 1 and self.answer.upper() in LETTERS else "")
            raise InputError(
                f"answer={self.answer!r} is not an option index: give the index of the correct option as an int "
                f"(0 for the first){hint}"
            )
        for name in ("fps", "sample_rate"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
                                      or not np.isfinite(value) or value <= 0):
                raise InputError(f"{name}={value!r} must be a positive number (frames / samples per second)")
        if self.sample_rate is not None and float(self.sample_rate) != int(self.sample_rate):
            raise InputError(f"sample_rate={self.sample_rate!r} must be a whole number of samples per second")
        if self.answer is not None:
            if not self.options:
                raise InputError("answer given without options: pass options=[...] or drop answer")
            if not 0 <= self.answer < len(self.options):
                raise InputError(
                    f"answer={self.answer} is not among the {len(self.options)} options: "
                    f"give the index of the correct option (0..{len(self.options) - 1})"
                )
        if isinstance(self.video, np.ndarray):
            if self.video.ndim != 4 or self.video.shape[-1] != 3 or self.video.dtype != np.uint8:
                raise InputError(
                    f"video array has shape {self.video.shape} and dtype {self.video.dtype}: "
                    "pass uint8 frames shaped [frames, H, W, 3]"
                )
            if not self.fps:
                raise InputError("video given as frames without a rate: pass fps=")
        if isinstance(self.audio, np.ndarray) and not self.sample_rate:
            raise InputError("audio given as a waveform without a rate: pass sample_rate=")
        if self.items and self.video is not None:
            raise InputError("a sample has either a video or interleaved items, not both")
        if self.layout not in ("dataset", "study"):
            raise InputError(f"layout {self.layout!r} is unknown: use 'dataset' (items at their tags) or 'study'")
        if isinstance(self.prompt_format, str) and self.prompt_format not in PROMPT_FORMATS:
            raise InputError(
                f"unknown prompt_format {self.prompt_format!r}: use one of {sorted(PROMPT_FORMATS)}"
            )
        tags = [it.tag for it in self.items]
        if len(set(tags)) != len(tags):
            raise InputError(f"item tags repeat ({tags}): give each item its own tag")
        missing = [t for t in tags if t not in self.question]
        if missing:
            raise InputError(
                f"items {missing} have no placeholder in the question: write them into the "
                "question text where they go, e.g. 'Which image matches [audio1]? [img1] [img2]'"
            )

    @property
    def format(self) -> PromptFormat:
        fmt = self.prompt_format
        return PROMPT_FORMATS[fmt] if isinstance(fmt, str) else fmt

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    def question_text(self) -> str:
        """The question without its item tags (the study's layout), whitespace tidied."""
        text = self.question
        for it in self.items:
            text = text.replace(it.tag, " ")
        text = re.sub(r"[ \t]+", " ", text)
        return re.sub(r" +([?.!,:;])", r"\1", text).strip()

    def question_parts(self) -> list[str | Item]:
        """The question split at item tags, in reading order: text pieces and items."""
        by_tag = {it.tag: it for it in self.items}
        parts: list[str | Item] = []
        rest = self.question
        while by_tag:
            hits = [(rest.find(t), t) for t in by_tag if t in rest]
            if not hits:
                break
            at, tag = min(hits)
            if at:
                parts.append(rest[:at])
            parts.append(by_tag.pop(tag))
            rest = rest[at + len(tag):]
        if rest:
            parts.append(rest)
        return parts
