"""The real Qwen2 / Qwen2.5 vocabulary, for the embedded models, without the model hub.

Both families (Qwen2.5-Omni and video-SALMONN 2+, whose LLM is Qwen2.5-VL's) share the
Qwen2 byte-level BPE: 151,643 ranked tokens, then the special tokens from id 151643 on.
The tokenizer is where position maps go wrong (the BPE merges across what look like
separate prompt pieces: ``"?\\n"`` is one token, 5267), so the embedded models carry the
real one, never a toy.

PyPI's ``qwen-agent`` (0.0.34) ships the ranks as ``qwen_agent/utils/qwen.tiktoken``
(one ``base64(token) rank`` per line), identical to the released ``vocab.json``. It is
installed without its dependencies (``pip install --no-deps qwen-agent==0.0.34``, done
by ``make install``) and never imported: avmech only reads that file, through the
package metadata. transformers' own `TikTokenConverter` turns the ranks into BPE merges,
and transformers' own `Qwen2Tokenizer` (NFC, the Qwen2 split pattern with single digits)
wraps them: ``"Who is speaking?\\n"`` -> ``[15191, 374, 12094, 5267]`` as with the
released tokenizer.
"""

from __future__ import annotations

import base64
import functools
from importlib import metadata
from pathlib import Path

from avmech.errors import ModelError

RANKS_PACKAGE, RANKS_VERSION = "qwen-agent", "0.0.34"
RANKS_FILE = "qwen_agent/utils/qwen.tiktoken"
N_RANKS = 151_643  # ordinary tokens; the special tokens follow from this id on
VOCAB_SIZE = 151_936  # the embedding rows of Qwen2.5-Omni-3B and Qwen2.5-VL-3B (ids past the tokens are padding)


def ranks_file() -> Path:
    """Where the installed ``qwen-agent`` keeps the Qwen2 ranks (read, never imported)."""
    try:
        path = Path(metadata.distribution(RANKS_PACKAGE).locate_file(RANKS_FILE))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ModelError(
            f"the embedded models use the real Qwen2.5 vocabulary, which PyPI's {RANKS_PACKAGE} ships as "
            f"{RANKS_FILE}: install it without its dependencies, `pip install --no-deps "
            f"{RANKS_PACKAGE}=={RANKS_VERSION}` (make install does)"
        )
    return path


@functools.cache
def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level vocabulary (token string -> id) and BPE merges of Qwen2 (about 1 s, once)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks: dict[bytes, int] = {}
    for line in ranks_file().read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != N_RANKS:
        raise ModelError(f"{ranks_file()} holds {len(ranks)} ranks, not Qwen2's {N_RANKS}: reinstall {RANKS_PACKAGE}")

    class _Ranks(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(url: str) -> dict[bytes, int]:
            return ranks

    return _Ranks().extract_vocab_merges_from_model(None)


def qwen_tokenizer(specials: tuple[str, ...], token_attrs: dict[str, str], chat_template: str | None = None):
    """transformers' `Qwen2Tokenizer` over the real vocabulary, ``specials`` at ids 151643, 151644, ...

    ``token_attrs`` names special tokens as attributes (``video_token="<|VIDEO|>"``), as
    the released tokenizer configs do for the processors that read them."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = vocab_and_merges()
    vocab = {**vocab, **{s: N_RANKS + i for i, s in enumerate(specials)}}
    tok = Qwen2Tokenizer(vocab=vocab, merges=list(merges), unk_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", extra_special_tokens=token_attrs)
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials], special_tokens=True)
    ids = tok.convert_tokens_to_ids(list(specials))
    if ids != list(range(N_RANKS, N_RANKS + len(specials))):
        raise ModelError(f"internal: special tokens landed at ids {ids[:3]}..., not from {N_RANKS} on")
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok
