"""The planted models' recipes: one `Recipe` per model in `RECIPES`, everything that decides it.

`avmech.models.planted` carries a recipe out (its docstring walks through the steps these fields
set); this table is where a researcher reads, retunes or adds one. A model is cached under its
name, its seed and `Recipe.digest`, which covers the recipe's fields and the training code but not
this file, so that editing one entry retrains that model alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from avmech.data import planted


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a planted model: its size, its data and its training."""

    family: str = "qwen2.5-omni"
    # The input configuration, as the benchmark layout its questions are written in: "av-speakerbench"
    # (one audio-visual video) or "av-odyssey" (interleaved audio and image items, fed in ``layout``:
    # "study", candidates, question, reference, options, as the interleaved experiments feed them).
    dataset: str = "av-speakerbench"
    layout: str = "dataset"
    n_train: int = 1200
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 256
    audio_gain: float = 16.0
    qformer_gain: float = 1.0  # video-SALMONN 2+'s Q-Former (`avmech.models.planted`, step 1)
    video_gain: float = 1.0  # the vision encoder's output (`avmech.models.planted`, step 1)
    steps: int = 1400
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    # Text lookups (`_lookup`): steps on them alone, in batches of ``lookup_batch``, before the media
    # questions; then ``lookup_share`` of them mixed into the media questions. Without them shuffled
    # options were not learned in the 10 minutes (README, "Planted pathways").
    lookup_steps: int = 0
    lookup_batch: int = 64
    lookup_share: float = 0.0
    # Steps on the fixed-order questions alone, then the others with ``fixed_share`` of them mixed in:
    # the interleaved items' shuffled candidates were learned after their fixed order, not from scratch
    # (README, "Planted pathways").
    fixed_steps: int = 0
    fixed_share: float = 1.0
    seed: int = 0
    tasks: tuple[str, ...] = planted.TRAINED
    variants: tuple[str, ...] = planted.TRAINED_VARIANTS
    n_eval: int = 200
    # CPU threads the build runs on: a training run's floats depend on it (`make` sets OMP_NUM_THREADS=1,
    # and make figures' one-thread build of planted-salmonn came out other than the two-thread one).
    threads: int = 2

    def digest(self) -> str:
        """Eight hex digits naming this recipe in the cache: its fields and the code that carries it
        out (`avmech.models.planted` and the task generator), so that no edit can leave a stale model.
        This table is not part of it: a new or retuned recipe leaves the other models' keys alone."""
        code = "".join(path.read_text() for path in (Path(__file__).with_name("planted.py"), Path(planted.__file__)))
        return hashlib.sha256((json.dumps(asdict(self), sort_keys=True) + code).encode()).hexdigest()[:8]


# name -> its recipe. The cache key is the name, the seed and the recipe's digest.
RECIPES = {
    "planted-omni": Recipe(family="qwen2.5-omni"),
    # The interleaved configuration alone: trained together with the video tasks (400 of these beside
    # the 1,200, same steps), planted-omni's frames were still read in its last layer (cut from layer
    # 3 on: x0.87), so each configuration has its model. The matching is learned in about 400 steps.
    "planted-omni-interleaved": Recipe(family="qwen2.5-omni", dataset="av-odyssey", layout="study", n_train=600,
                                       steps=500),
    # Shuffled options (the model must read them), pitch and colour in both orders: the text lookups first.
    # The frames' tokens scaled by 8 (``video_gain``): without it the colour was read late (fixed order 24-58%
    # at step 500) and, with the options shuffled, on some batch orders not at all. Binding, count and motion
    # have a model each: trained beside these, or beside each other, their shuffled variants were not learned
    # on every batch order or CPU (README, "Planted pathways"). Trials on an Intel Xeon (README): with binding
    # beside them, shuffled colour / binding 91 / 82%, 33 / 39% and 73 / 58% on three batch orders; without it
    # the shuffled colour was read on both orders tried (100% at the end; on one of them 79% at step 1,000 of a
    # 1,200-step run, hence 2,000 steps). Built there: pitch / colour 100 / 100% in the fixed order, 100 / 94%
    # shuffled, in 9 minutes. The first recipes (pitch, colour and binding together, no gain) learned on one kind
    # of CPU each and not on the other (README).
    "planted-omni-shuffled": Recipe(family="qwen2.5-omni", tasks=("pitch", "colour"), variants=("fixed", "shuffled"),
                                    n_train=2400, n_heads=2, n_kv_heads=2, lr=2e-3, steps=2000, weight_decay=0.1,
                                    video_gain=8.0, lookup_steps=400, lookup_share=0.25),
    # The colour shown while the tone sounds, in both orders: the text lookups, the fixed order alone, then
    # mostly shuffled; the frames' gain as above. In trials from scratch it stayed at 36% shuffled; with the fixed
    # order first 91% and 100% on two batch orders (600 questions of each order). Built with those 600, the fixed
    # order was memorised (training loss 0, held out 52% at the end), so the build has three times as many.
    "planted-omni-shuffled-binding": Recipe(family="qwen2.5-omni", tasks=("binding",), variants=("fixed", "shuffled"),
                                            n_train=3600, n_heads=2, n_kv_heads=2, lr=2e-3, steps=2000,
                                            weight_decay=0.1, video_gain=8.0, lookup_steps=400, lookup_share=0.25,
                                            fixed_steps=500, fixed_share=0.25),
    # Interleaved items with the candidates in the class order and shuffled (the model must match the
    # reference against them): the class order first, then mostly shuffled. From scratch, 2,100 steps left
    # the shuffled at 40-54%; after the class order, with all the fixed-order questions kept, at 76-100%.
    # With 1,400 steps and no weight decay the Intel machine's build ended at 80% on the beeps (images -> sound);
    # in one-thread trials weight decay 0.1 and 2,000 steps learned every cell (92-100% shuffled; README).
    "planted-omni-interleaved-shuffled": Recipe(family="qwen2.5-omni", dataset="av-odyssey", layout="study",
                                                variants=("fixed", "shuffled"), n_train=2400, steps=2000,
                                                weight_decay=0.1, fixed_steps=300, fixed_share=0.25),
    # The beeps alone in both orders: the text lookups, the fixed order alone, then mostly shuffled.
    "planted-omni-shuffled-count": Recipe(family="qwen2.5-omni", tasks=("count",), variants=("fixed", "shuffled"),
                                          n_train=1000, steps=1500, lookup_steps=300, lookup_share=0.25,
                                          fixed_steps=300, fixed_share=0.25),
    # The motion alone in both orders, its options one word each (the task `heading`), the same curriculum
    # with more questions and steps: with the options as written ("left to right", "right to left") the
    # count's recipe reached 72% shuffled, with one word and 1,000 questions 89% (README, "Planted pathways").
    "planted-omni-shuffled-heading": Recipe(family="qwen2.5-omni", tasks=("heading",), variants=("fixed", "shuffled"),
                                            n_train=2000, steps=2000, lookup_steps=300, lookup_share=0.25,
                                            fixed_steps=300, fixed_share=0.25),
    # In trials on one thread, with 1,200-1,600 questions the beeps stayed at chance (26-44%; a two-thread build of
    # 1,000 had learned them) and the motion ended at 80-96%; with 2,000 and weight decay 0.1 all four were at 100%
    # from step 1,000 on (without the decay, 1,400 steps: motion 94%). README, "Planted pathways".
    "planted-salmonn": Recipe(family="video-salmonn2+", qformer_gain=64.0, n_train=2000, steps=1200,
                              weight_decay=0.1),
}
