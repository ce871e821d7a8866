"""Prompts: the text a model reads, and what each of its positions is.

A prompt is assembled from parts that know what they are: the system turn, a vision
marker, the ``<|VIDEO|>`` tokens of one 2-second chunk, option letter "B"
(`PromptBuilder`). The assembled text is then tokenized **once**, with character
offsets, and every token takes the role and attributes of the part its first character
belongs to. Counting tokens part by part would be wrong: Qwen2's byte-level BPE merges
across part boundaries (``"?\\n"`` is one token, 5267; ``".\\n"`` another, 624), which
shifts every later position by one or more on real prompts.

The rule for a token that straddles two parts: it belongs to the part of its first
character. The ``"?\\n"`` closing a question is a ``question`` token, and the line break
it swallowed has no position of its own. Media placeholders are special tokens, one per
position, and never merge.

`PromptBuilder.build` then checks what the map promises, and refuses with a
`ModelError` naming the position and its tokens: one role per id; every media id in its
media role and nowhere else; ``last`` is the final id (the assistant header's line
break); each option letter is one position holding that letter's id; and the letter
ids are what the model emits after the prompt (the text followed by the letter
tokenizes to the prompt's ids followed by the letter's id).

`user_parts` and `chat_parts` write a sample's ChatML turns, question, items and options
the same way for every family; a family only expands its media (`Slot`) into runs of
placeholder tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from jaxtyping import Int

from avmech.errors import InputError, ModelError
from avmech.sample import LETTERS, AVSample, Item
from avmech.tokens import ITEM_ROLES, ROLE_CODE, TokenMap

# Roles whose text comes from the chat template itself (special tokens allowed there).
TEMPLATE_ROLES = ("user_header", "turn_end", "assistant_header")


@dataclass(frozen=True)
class Text:
    """A run of prompt text with its role (``option`` for an option's letter and text)."""

    text: str
    role: str
    option: int = -1
    template: bool = False  # written by the chat template: may hold special tokens


@dataclass(frozen=True)
class Slot:
    """Where a medium goes: the sample's own clip (``item`` -1) or interleaved item ``item``.

    ``kind`` is ``"video"``, ``"audio"`` or ``"image"``; a video slot ``with_audio``
    interleaves the clip's sound."""

    kind: str
    item: int = -1
    with_audio: bool = False


Part = Text | Slot


def user_parts(s: AVSample, lead: Slot | None = None, after_lead: str = "") -> list[Part]:
    """The user turn of ``s``: the benchmark's intro, its own clip (``lead``, then
    ``after_lead``), the benchmark's preamble, the question with its items (at their tags, or in the study's order, see
    ``AVSample.layout``), the option lines and the suffix."""
    fmt = s.format
    out: list[Part] = [Text(fmt.intro, "instruction")]
    if lead is not None:
        out.append(lead)
        if after_lead:
            out.append(Text(after_lead, "instruction"))
    for text in (fmt.preamble, fmt.question_prefix):
        out.append(Text(text, "instruction"))
    index = {id(it): k for k, it in enumerate(s.items)}  # by identity: items may hold arrays
    in_order = [part for part in s.question_parts() if isinstance(part, Item)]
    if s.layout == "study":  # [candidates][question][reference][options]
        out += [Slot(it.kind, index[id(it)]) for it in in_order if it.role == "candidate"]
        out.append(Text(s.question_text(), "question"))
        out += [Slot(it.kind, index[id(it)]) for it in in_order if it.role == "reference"]
    else:
        for part in s.question_parts():
            out.append(Slot(part.kind, index[id(part)]) if isinstance(part, Item) else Text(part, "question"))
    for i, (letter, text) in enumerate(zip(s.letters, s.options)):
        line = fmt.option_template.format(letter=letter, text=text)
        at = line.index(letter)
        out.append(Text(fmt.sep if i == 0 else fmt.option_sep, "instruction"))
        out.append(Text(line[:at], "option_text", option=i))
        out.append(Text(letter, "option_letter", option=i))
        out.append(Text(line[at + 1:], "option_text", option=i))
    out.append(Text(fmt.suffix, "instruction"))
    return [p for p in out if not isinstance(p, Text) or p.text]


def chat_parts(system: str, user: list[Part]) -> list[Part]:
    """ChatML: the system turn, the user turn and the assistant header the answer follows."""
    return [
        Text("<|im_start|>system\n", "system", template=True), Text(system, "system"),
        Text("<|im_end|>\n", "system", template=True),
        Text("<|im_start|>user\n", "user_header", template=True), *user,
        Text("<|im_end|>\n", "turn_end", template=True),
        Text("<|im_start|>assistant\n", "assistant_header", template=True),
    ]


def conversation(parts: list[Part]) -> list[dict[str, Any]]:
    """The chat-template conversation of `chat_parts` (media as typed content parts), for
    checking a prompt against a released template's ``apply_chat_template``."""
    system = "".join(p.text for p in parts if isinstance(p, Text) and p.role == "system" and not p.template)
    user: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, Slot):
            user.append({"type": p.kind})
        elif p.template or p.role == "system":
            continue
        elif user and user[-1]["type"] == "text":
            user[-1]["text"] += p.text
        else:
            user.append({"type": "text", "text": p.text})
    return [{"role": "system", "content": [{"type": "text", "text": system}]}, {"role": "user", "content": user}]


def check_text(parts: list[Part], tokenizer) -> None:
    """Text from the sample (question, options, system prompt, boilerplate) may not hold a
    special token: the tokenizer would read it as a placeholder or a turn marker."""
    specials = {t for t in [*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()] if t.startswith("<")}
    for p in parts:
        if isinstance(p, Text) and not p.template:
            found = sorted(t for t in specials if t in p.text)
            if found:
                raise InputError(
                    f"the {p.role} text {p.text[:60]!r} contains the special token {found[0]!r}, which the "
                    "tokenizer reads as a placeholder or turn marker, not as text: remove it from the sample"
                )


def item_slots(parts: list[Part]) -> list[Slot]:
    """The interleaved items' slots in prompt order: the order their media are processed in."""
    return [p for p in parts if isinstance(p, Slot) and p.item >= 0]


def render(parts: list[Part], placeholder: Callable[[Slot], str]) -> str:
    """The prompt's text with each medium written as ``placeholder(slot)``."""
    return "".join(p.text if isinstance(p, Text) else placeholder(p) for p in parts)


@dataclass(frozen=True)
class Built:
    """A tokenized prompt: its text, ids, map, option letter ids, and each part's token span."""

    text: str
    ids: Int[torch.Tensor, "batch pos"]
    tokens: TokenMap
    answer_ids: tuple[int, ...]
    spans: list[tuple[int, int]]


@dataclass
class _Piece:
    text: str
    role: str
    attrs: dict[str, Any]
    n: int = 1  # positions: 1 for text (its tokens share the attributes), n for a media run
    token: str | None = None  # a media run: ``text == token * n``
    time: np.ndarray | None = None
    grid: np.ndarray | None = None
    template: bool = False


@dataclass
class PromptBuilder:
    """Parts in reading order; `build` tokenizes them once and names every position.

    ``media_ids`` maps each media role to its placeholder id (``{"video": 151656, ...}``)
    for the check that media ids sit exactly at media positions."""

    tokenizer: Any
    media_ids: dict[str, int]
    pieces: list[_Piece] = field(default_factory=list)

    def text(self, text: str, role: str, *, option: int = -1, item: int = -1, item_role: str = "",
             template: bool = False) -> int:
        """Append text of one role; returns the part's index (for `Built.spans`)."""
        if role not in ROLE_CODE:
            raise ValueError(f"unknown role {role!r}")
        self.pieces.append(_Piece(text, role, dict(option=option, item=item, item_role=item_role),
                                  template=template))
        return len(self.pieces) - 1

    def run(self, token: str | int, n: int, role: str, *, time: np.ndarray | float = np.nan, grid=None,
            chunk: int = -1, item: int = -1, item_role: str = "") -> int:
        """Append ``n`` copies of the special ``token`` (its text or id; one position each);
        ``time`` and ``grid`` may give one value per position."""
        if role not in ROLE_CODE:
            raise ValueError(f"unknown role {role!r}")
        if isinstance(token, int):
            token = self.tokenizer.convert_ids_to_tokens(token)
        times = np.broadcast_to(np.asarray(time, dtype=np.float64), (n,))
        cells = np.asarray(grid, dtype=np.int64).reshape(n, 3) if grid is not None else np.full((n, 3), -1)
        self.pieces.append(_Piece(token * n, role, dict(chunk=chunk, item=item, item_role=item_role),
                                  n=n, token=token, time=times, grid=cells))
        return len(self.pieces) - 1

    def add(self, parts: list[Part], expand: Callable[[PromptBuilder, Slot], None]) -> None:
        """Append parts, media slots expanded by ``expand`` (the family's)."""
        check_text(parts, self.tokenizer)
        for p in parts:
            if isinstance(p, Text):
                self.text(p.text, p.role, option=p.option, template=p.template)
            else:
                expand(self, p)

    # ---- tokenize once, then check ------------------------------------------------------
    def build(self, s: AVSample) -> Built:
        tok = self.tokenizer
        pieces = self.pieces  # empty ones get no token: the next part starts where they do
        text = "".join(p.text for p in pieces)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        first = np.asarray([a for a, _ in enc["offset_mapping"]], dtype=np.int64)
        starts = np.cumsum([0] + [len(p.text) for p in pieces[:-1]])
        which = np.searchsorted(starts, first, side="right") - 1  # the part of each token's first character
        within = first - starts[which]

        # one row per position a part can give: a text part one, a media run one per token
        rows = np.cumsum([0] + [p.n for p in pieces[:-1]])
        k = np.zeros(len(ids), dtype=np.int64)
        for j in np.unique(which):
            p = pieces[j]
            if p.token is not None:
                at = np.flatnonzero(which == j)
                k[at] = within[at] // len(p.token)
                self._check_run(p, ids[at], within[at], enc, at)
        element = rows[which] + k
        flat = [(p, i) for p in pieces for i in range(p.n)]
        role = np.asarray([ROLE_CODE[p.role] for p, _ in flat], dtype=np.int8)[element]
        role[-1] = ROLE_CODE["last"]
        attr = lambda name, default: np.asarray([p.attrs.get(name, default) for p, _ in flat])[element]  # noqa: E731
        time = np.asarray([p.time[i] if p.time is not None else np.nan for p, i in flat])[element]
        grid = np.asarray([p.grid[i] if p.grid is not None else (-1, -1, -1) for p, i in flat]).reshape(-1, 3)[element]
        tokens = TokenMap(
            role=role, item=attr("item", -1).astype(np.int32),
            item_role=np.asarray([ITEM_ROLES.index(r) for r in attr("item_role", "")], dtype=np.int8),
            option=attr("option", -1).astype(np.int32), time=time.astype(np.float64),
            grid=grid.astype(np.int32), chunk=attr("chunk", -1).astype(np.int32),
            answer=s.answer, n_options=len(s.options), item_kinds=tuple(it.kind for it in s.items),
        )
        answer_ids = self._letter_ids(len(s.options))
        built = Built(text, torch.as_tensor(ids)[None], tokens, answer_ids,
                      [(int(np.searchsorted(which, j)), int(np.searchsorted(which, j, side="right")))
                       for j in range(len(pieces))])
        self._check(built, pieces[which[-1]])
        return built

    def _tokens(self, ids) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])

    def _check_run(self, p: _Piece, ids: np.ndarray, within: np.ndarray, enc, at: np.ndarray) -> None:
        expected = self.tokenizer.convert_tokens_to_ids(p.token)
        widths = np.asarray([enc["offset_mapping"][i][1] - enc["offset_mapping"][i][0] for i in at])
        if len(ids) != p.n or (ids != expected).any() or (within % len(p.token)).any() or (widths != len(p.token)).any():
            raise ModelError(
                f"internal: the {p.n} {p.token!r} placeholders of a {p.role} run tokenized as "
                f"{self._tokens(ids[:4])}...: is {p.token!r} a special token of this tokenizer?"
            )

    def _letter_ids(self, n: int) -> tuple[int, ...]:
        out = []
        for letter in LETTERS[:n]:
            ids = self.tokenizer.encode(letter, add_special_tokens=False)
            if len(ids) != 1:
                raise ModelError(f"option letter {letter!r} is not one token for this tokenizer: {ids}")
            out.append(ids[0])
        return tuple(out)

    def _check(self, b: Built, final: _Piece) -> None:
        ids, t = b.ids[0].numpy(), b.tokens
        where = lambda i: f"position {i} ({self._tokens(ids[max(0, i - 2):i + 3])} around it)"  # noqa: E731
        if len(t) != len(ids):
            raise ModelError(f"internal: the map has {len(t)} positions for {len(ids)} ids")
        for role, token_id in self.media_ids.items():
            roles = {r for r, i in self.media_ids.items() if i == token_id}
            wrong = np.flatnonzero((ids == token_id) & ~np.isin(t.role, [ROLE_CODE[r] for r in roles]))
            if len(wrong):
                raise ModelError(f"media id {token_id} ({role}) outside a {'/'.join(sorted(roles))} role at "
                                 f"{where(int(wrong[0]))}: the prompt's text holds a placeholder")
            missing = np.flatnonzero((t.role == ROLE_CODE[role]) & (ids != token_id))
            if len(missing):
                raise ModelError(f"internal: the {role} position at {where(int(missing[0]))} holds id "
                                 f"{int(ids[missing[0]])}, not the {role} id {token_id}")
        if final.role != "assistant_header":
            raise ModelError(f"internal: the final position belongs to a {final.role} part, not the assistant header")
        for i, letter_id in enumerate(b.answer_ids):
            at = np.flatnonzero((t.role == ROLE_CODE["option_letter"]) & (t.option == i))
            if len(at) != 1 or ids[at[0]] != letter_id:
                near = np.flatnonzero(t.option == i)
                raise ModelError(
                    f"option {LETTERS[i]}'s letter is not a position of its own holding id {letter_id}: "
                    f"{where(int(near[0])) if len(near) else 'it has no position'}; the letter merges with the text "
                    "around it in this prompt format: use an option template where the letter stands alone "
                    "(e.g. '{letter}. {text}')"
                )
            emitted = self.tokenizer.encode(b.text + LETTERS[i], add_special_tokens=False)
            if emitted != [*ids.tolist(), letter_id]:
                raise ModelError(
                    f"after this prompt the letter {LETTERS[i]!r} would not be emitted as id {letter_id} "
                    f"(the prompt and the letter tokenize to {self._tokens(emitted[-3:])} at the end)"
                )
