"""TokenMap: what every sequence position of a prepared prompt is.

Flow analyses ask questions about *groups* of positions ("block the audio tokens from
the question"), so the first job of an instrument is to say, for every position, what
it is. avmech makes that record from the prompt's ids themselves, never by searching
the token string: the prompt is assembled from parts that know their role (the system
turn, a vision marker, the audio tokens of a 2-second chunk, option letter "B"),
tokenized once with offsets, and each token takes the role of the part its first
character belongs to (`avmech.prompt`, which also checks the result).

Per position it records:

- ``role``: one of `ROLES` (``video``, ``audio``, ``question``, ``option_letter``, ...);
- ``item``: index of the interleaved item (image/audio clip) it belongs to, else -1,
  and ``item_role``: ``candidate`` / ``reference`` / ``""``;
- ``option``: index of the option (letter and text) it belongs to, else -1;
- ``time``: start time in seconds of audio/video tokens, else NaN;
- ``grid``: the (t, row, col) merged-patch grid cell of video/image tokens, else -1;
- ``chunk``: the interleaving chunk of audio-visual tokens, else -1.

Groups are named by role or alias (`GROUP_ALIASES`) and compose with set algebra, as
`Group` objects (``tokens.group("audio") | tokens.group("video")``) or as expression
strings (``tokens.group("options - correct")``, ``"item(2) & audio"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Int

from avmech.errors import InputError

ROLES: tuple[str, ...] = (
    "system",            # the whole system turn, its header and end included
    "user_header",       # <|im_start|>user\n
    "marker",            # vision/audio begin/end markers around media
    "video",
    "audio",
    "audio_pad",         # audio tokens that encode padding silence (video-SALMONN 2+)
    "image",
    "instruction",       # fixed prompt text around the question (benchmark boilerplate)
    "question",
    "option_letter",
    "option_text",
    "turn_end",          # <|im_end|>\n closing the user turn
    "assistant_header",  # <|im_start|>assistant, without the final position
    "last",              # the final position, where the answer letter is read
    "generated",         # positions written by the model after the prompt (see `TokenMap.extended`)
)
ROLE_CODE = {r: i for i, r in enumerate(ROLES)}
ITEM_ROLES = ("", "candidate", "reference")

# Names that are not a single role. Values are expressions over roles and attributes.
GROUP_ALIASES: dict[str, str] = {
    # The study's "[question+options]" block of the audio-visual input: every text of the user
    # turn (benchmark instructions, question, option letters and texts). `question` is the
    # question sentence alone.
    "question_block": "instruction | question | option_letter | option_text",
    # Every position holding audio features, as the study counts "the audio tokens": for
    # video-SALMONN 2+ also the padding silence of its 30-second chunks (one token id).
    "audio_tokens": "audio | audio_pad",
    "options": "option_letter | option_text",
    "av": "video | audio | audio_pad | image",
    "modalities": "video | audio | image",
    "text": "instruction | question | option_letter | option_text",
    "prompt": "system | user_header | instruction | question | option_letter | option_text",
}
_SPECIAL = ("candidates", "reference", "correct", "incorrect", "all")


@dataclass(frozen=True)
class Group:
    """A named set of positions. Compose with ``|`` (union), ``&`` (intersection), ``-``."""

    name: str
    positions: tuple[int, ...]

    def __or__(self, other: Group) -> Group:
        return Group(f"({self.name} | {other.name})", tuple(sorted(set(self.positions) | set(other.positions))))

    def __and__(self, other: Group) -> Group:
        return Group(f"({self.name} & {other.name})", tuple(sorted(set(self.positions) & set(other.positions))))

    def __sub__(self, other: Group) -> Group:
        return Group(f"({self.name} - {other.name})", tuple(sorted(set(self.positions) - set(other.positions))))

    def __len__(self) -> int:
        return len(self.positions)

    def tensor(self) -> Int[torch.Tensor, " pos"]:
        return torch.tensor(self.positions, dtype=torch.long)


@dataclass
class TokenMapBuilder:
    """Appends pieces of a prompt with their attributes; `build` freezes a `TokenMap`."""

    role: list[int] = field(default_factory=list)
    item: list[int] = field(default_factory=list)
    item_role: list[int] = field(default_factory=list)
    option: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    grid: list[tuple[int, int, int]] = field(default_factory=list)
    chunk: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.role)

    def add(
        self,
        n: int,
        role: str,
        *,
        item: int = -1,
        item_role: str = "",
        option: int = -1,
        time: np.ndarray | float = np.nan,
        grid: np.ndarray | None = None,
        chunk: int = -1,
    ) -> None:
        """Append ``n`` positions of one role; array attributes give one value per position."""
        if role not in ROLE_CODE:
            raise ValueError(f"unknown role {role!r}")
        self.role += [ROLE_CODE[role]] * n
        self.item += [item] * n
        self.item_role += [ITEM_ROLES.index(item_role)] * n
        self.option += [option] * n
        self.time += list(np.broadcast_to(np.asarray(time, dtype=np.float64), (n,)))
        self.grid += [tuple(g) for g in grid] if grid is not None else [(-1, -1, -1)] * n
        self.chunk += [chunk] * n

    def build(self, *, answer: int | None, n_options: int, item_kinds: tuple[str, ...] = ()) -> TokenMap:
        return TokenMap(
            role=np.asarray(self.role, dtype=np.int8),
            item=np.asarray(self.item, dtype=np.int32),
            item_role=np.asarray(self.item_role, dtype=np.int8),
            option=np.asarray(self.option, dtype=np.int32),
            time=np.asarray(self.time, dtype=np.float64),
            grid=np.asarray(self.grid, dtype=np.int32).reshape(-1, 3),
            chunk=np.asarray(self.chunk, dtype=np.int32),
            answer=answer,
            n_options=n_options,
            item_kinds=item_kinds,
        )


@dataclass(frozen=True, eq=False)
class TokenMap:
    """Per-position roles and attributes of one prepared prompt (see the module docstring)."""

    role: np.ndarray
    item: np.ndarray
    item_role: np.ndarray
    option: np.ndarray
    time: np.ndarray
    grid: np.ndarray
    chunk: np.ndarray
    answer: int | None
    n_options: int
    item_kinds: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.role)

    def extended(self, n_new: int) -> TokenMap:
        """This map followed by ``n_new`` positions of role ``generated`` (for generation)."""
        b = TokenMapBuilder()
        b.add(n_new, "generated")
        tail = b.build(answer=self.answer, n_options=self.n_options)
        cat = {f: np.concatenate([getattr(self, f), getattr(tail, f)])
               for f in ("role", "item", "item_role", "option", "time", "grid", "chunk")}
        return TokenMap(**cat, answer=self.answer, n_options=self.n_options, item_kinds=self.item_kinds)

    @property
    def roles(self) -> list[str]:
        return [ROLES[c] for c in self.role]

    # ---- groups -------------------------------------------------------------------
    def _mask(self, name: str) -> np.ndarray:
        if name in ROLE_CODE:
            return self.role == ROLE_CODE[name]
        if name in GROUP_ALIASES:
            mask = np.zeros(len(self), dtype=bool)
            mask[list(self.group(GROUP_ALIASES[name]).positions)] = True
            return mask
        if name == "candidates":
            return self.item_role == ITEM_ROLES.index("candidate")
        if name == "reference":
            return self.item_role == ITEM_ROLES.index("reference")
        if name in ("correct", "incorrect"):
            if self.answer is None:
                raise InputError(f"group {name!r} needs a sample with an answer")
            opts = self.option >= 0
            return opts & ((self.option == self.answer) == (name == "correct"))
        if name == "all":
            return np.ones(len(self), dtype=bool)
        raise InputError(
            f"unknown token group {name!r}: use a role ({', '.join(ROLES)}), an alias "
            f"({', '.join(list(GROUP_ALIASES) + list(_SPECIAL))}), item(k) or option(k)"
        )

    def group(self, expr: str | Group | list | tuple) -> Group:
        """Resolve a group name or expression (``"audio | video"``, ``"options - correct"``);
        a list of them means their union (``["audio", "video"]``)."""
        if isinstance(expr, (list, tuple)):
            if not expr:
                return Group("nothing", ())
            groups = [self.group(e) for e in expr]
            out = groups[0]
            for g in groups[1:]:
                out = out | g
            return out
        if isinstance(expr, Group):
            bad = [p for p in expr.positions if not 0 <= p < len(self)]
            if bad:
                raise InputError(f"group {expr.name!r} has positions {bad[:5]} outside 0..{len(self) - 1}")
            return expr
        return _Parser(expr, self).parse()

    def positions(self, expr: str | Group) -> Int[torch.Tensor, " pos"]:
        """1-D LongTensor of the positions in a group, ascending."""
        return self.group(expr).tensor()

    def select(
        self,
        expr: str | Group = "all",
        *,
        time: tuple[float, float] | None = None,
        item: int | None = None,
        option: int | None = None,
        chunk: int | None = None,
    ) -> Group:
        """A group narrowed by attributes, e.g. ``select("video", time=(0, 4))`` (seconds, [a, b))."""
        base = self.group(expr)
        mask = np.zeros(len(self), dtype=bool)
        mask[list(base.positions)] = True
        label = [base.name]
        if time is not None:
            mask &= (self.time >= time[0]) & (self.time < time[1])
            label.append(f"time in [{time[0]}, {time[1]})s")
        for attr, value in (("item", item), ("option", option), ("chunk", chunk)):
            if value is not None:
                mask &= getattr(self, attr) == value
                label.append(f"{attr}={value}")
        return Group(" & ".join(label), tuple(np.flatnonzero(mask).tolist()))

    def nonempty(self, expr: str | Group, what: str = "group") -> Group:
        """`group`, raising when it selects no position (a primitive would mean nothing)."""
        g = self.group(expr)
        if not len(g):
            raise InputError(
                f"{what} {g.name!r} selects no position in this sample: "
                f"it has {self.describe_roles()}"
            )
        return g

    def describe_roles(self) -> str:
        counts = np.bincount(self.role, minlength=len(ROLES))
        return ", ".join(f"{c} {ROLES[i]}" for i, c in enumerate(counts) if c)

    # ---- printing -----------------------------------------------------------------
    def runs(self) -> list[tuple[int, int, str]]:
        """Maximal runs of positions sharing role, item, option and chunk: (start, stop, label)."""
        keys = np.stack([self.role, self.item, self.option, self.chunk], axis=1)
        starts = [0] + [i for i in range(1, len(self)) if (keys[i] != keys[i - 1]).any()]
        out = []
        for a, b in zip(starts, starts[1:] + [len(self)]):
            label = ROLES[self.role[a]]
            if self.item[a] >= 0:
                label += f" item {self.item[a]} ({ITEM_ROLES[self.item_role[a]]}, {self.item_kinds[self.item[a]]})"
            if self.option[a] >= 0:
                label += f" option {'ABCDEFGHIJ'[self.option[a]]}"
                label += " (correct)" if self.option[a] == self.answer else ""
            if self.chunk[a] >= 0:
                label += f" chunk {self.chunk[a]}"
            t = self.time[a:b]
            if not np.isnan(t).all():
                label += f" t={np.nanmin(t):.2f}-{np.nanmax(t):.2f}s"
            out.append((a, b, label))
        return out

    def summary(self) -> str:
        lines = [f"TokenMap: {len(self)} positions ({self.describe_roles()})"]
        for a, b, label in self.runs():
            span = f"[{a}]" if b - a == 1 else f"[{a}:{b})"
            lines.append(f"  {span:>14}  {b - a:>5}  {label}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def check_expression(expr: str) -> str:
    """``expr`` if it is a well-formed group expression of known names (any sample's
    groups may still be empty); else an `InputError` naming the problem."""
    if not isinstance(expr, str) or not expr.strip():
        raise InputError(f"token group {expr!r} is not a group expression: write e.g. 'audio' or 'options - correct'")
    _Parser(expr, TokenMapBuilder().build(answer=0, n_options=0)).parse()
    return expr


_TOKEN = re.compile(r"\s*(?:(?P<op>[|&\-()])|(?P<call>\w+)\((?P<arg>\d+)\)|(?P<name>\w+))")


class _Parser:
    """``expr := term (op term)*`` left to right, ``term := name | name(k) | (expr)``."""

    def __init__(self, text: str, tokens: TokenMap) -> None:
        self.text, self.tokens, self.items = text, tokens, []
        pos = 0
        while pos < len(text.rstrip()):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise InputError(f"cannot parse token group {text!r} at {text[pos:]!r}")
            self.items.append(m)
            pos = m.end()
        self.i = 0

    def parse(self) -> Group:
        g = self._expr()
        if self.i != len(self.items):
            raise InputError(f"cannot parse token group {self.text!r}: unexpected {self.items[self.i].group(0)!r}")
        return g

    def _expr(self) -> Group:
        g = self._term()
        while self.i < len(self.items) and self.items[self.i].group("op") in ("|", "&", "-"):
            op = self.items[self.i].group("op")
            self.i += 1
            rhs = self._term()
            g = g | rhs if op == "|" else g & rhs if op == "&" else g - rhs
        return g

    def _term(self) -> Group:
        if self.i >= len(self.items):
            raise InputError(f"token group {self.text!r} ends early")
        m = self.items[self.i]
        self.i += 1
        if m.group("op") == "(":
            g = self._expr()
            if self.i >= len(self.items) or self.items[self.i].group("op") != ")":
                raise InputError(f"token group {self.text!r} misses a ')'")
            self.i += 1
            return g
        if m.group("call"):
            attr, k = m.group("call"), int(m.group("arg"))
            if attr not in ("item", "option", "chunk"):
                raise InputError(f"unknown selector {attr}({k}) in {self.text!r}: use item(k), option(k) or chunk(k)")
            mask = getattr(self.tokens, attr) == k
            return Group(f"{attr}({k})", tuple(np.flatnonzero(mask).tolist()))
        if m.group("name"):
            name = m.group("name")
            return Group(name, tuple(np.flatnonzero(self.tokens._mask(name)).tolist()))
        raise InputError(f"cannot parse token group {self.text!r} at {m.group(0)!r}")
