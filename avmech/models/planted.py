"""Planted-pathway demo models: small real architectures trained so the answer's route is known.

A flow is only as good as its ability to find a pathway that exists. Interpretability
methods are checked on models whose mechanism is known (InterpBench, Tracr); these are
avmech's. ``planted-omni`` is the Qwen2.5-Omni thinker and ``planted-salmonn`` video-SALMONN
2+ (real classes, real vocabulary, real processors) at a small width, trained here, on CPU,
on the planted tasks of
`avmech.data.planted`: multiple-choice questions whose answer is in the sound only
(the pitch of a tone, the number of beeps) or in the frames only (the colour of a
shape, the way it moves), the other stream drawn at random. ``planted-omni-interleaved``
learns the interleaved configuration: AV-Odyssey questions whose audio (or image)
reference is matched against four image (or audio) candidates in the class order, so that
the letter follows from the reference alone. ``planted-omni-shuffled`` answers pitch and colour with
the options in the fixed order and shuffled, where it must read the options to find the letter:
the options -> last route is exercised; ``planted-omni-shuffled-binding`` the task that needs
both streams (the colour shown while the tone sounds) in both orders, ``-count`` the number of
beeps and ``-heading`` the way the shape moves; ``planted-omni-interleaved-shuffled`` the interleaved items
with the candidates in the class order and shuffled, where it must match the reference against the
candidates. So, before any flow runs,
we know which tokens must carry the answer to the last position, and the known-answer
tests (``tests/test_planted.py``) check that the knockouts, the sweeps, the attention
readouts and token discarding say so.

The recipe, all of it in a `Recipe` (one entry per model of `RECIPES`, in
`avmech.models.planted_recipes`):

1. Build the random model of the real architecture. Its encoders stay frozen at their
   random weights, the audio encoder's input convolutions scaled up (``audio_gain``) so
   that the sound, not the random biases and positions, dominates what it emits (a
   tone's pitch and the beeps become directions a linear readout finds). The frames' tokens
   can be scaled up too (``video_gain``, the vision encoder's output): at random weights a
   clip's content moves them by a fifth of their size, and beside shuffled options the
   colour took over 1,250 steps to be read (500 with the frames' tokens scaled by 8). In
   video-SALMONN 2+ the Q-Former's cross-attention outputs are scaled up too
   (``qformer_gain``): its queries are the same for every window, and at random weights
   they drown what the window heard (a tone's class moved its audio tokens by 0.6% of their
   size, and the model stayed at chance on pitch; by 44% at a gain of 64).
2. Write the training questions in the released AV-SpeakerBench (or AV-Odyssey) layout
   (seeds of their own: the experiments read seed 0, the held-out check another) and run each through
   the model's own ``prepare`` and ``encode``: the LLM's inputs are exactly what every
   later trace starts from.
3. Train the LLM (decoder layers, final norm, unembedding; the token embeddings stay
   as they are) on the cross-entropy, over the full vocabulary, of the correct option
   letter at the last position and of the end of the turn after it (so greedy decoding
   answers with the letter and stops): AdamW, mini-batches, a linear warm-up and a
   cosine decay, gradients clipped. `train` is the whole loop. Where the options are shuffled
   the model must find the letter that stands before the option it perceived, a matching a
   small transformer finds slowly (at chance for a thousand steps); so such a recipe first
   trains on each question's text lookup (`_lookup`: the correct option's text, then the
   options, answered with its letter; short prompts without media, learned in about 300
   steps), then on the media questions with a quarter of the lookups mixed in. Interleaved items with
   shuffled candidates, the shuffled beeps and binding are learned after those in the fixed order: these alone
   first (``fixed_steps``), then the shuffled ones with a quarter of them kept (``fixed_share``).
4. Measure held-out accuracy per task, save it beside the weights (``planted.json``,
   with the recipe and the measured times) and save the model as an ordinary checkpoint.

Everything is seeded and repeatable: the planted clips are written lossless (libx264's
lossy encoding decoded to other frames on about half the rewrites, and three builds of one
recipe differed by up to 0.09 in a weight), the training set encodes to the same
embeddings, and training on CPU from the same inputs, on the recipe's number of threads,
gives the same weights (on another kind of CPU the floats may still round otherwise). The cache key
holds the digest of the recipe and of the code that carries it out, so a changed recipe is
a new model, never a stale one.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from jaxtyping import Float, Int

from avmech.data import planted, read
from avmech.errors import ModelError
from avmech.models.base import MEDIA_POLICY_FILE, AVModel
from avmech.models.planted_recipes import RECIPES, Recipe

PLANTED_FILE = "planted.json"
# A trained model answering any task less often than this is not saved: its route would not be known.
MIN_ACCURACY = 0.9


@dataclass
class Example:
    """One training question as the LLM sees it, answered: the prompt's embeddings and positions
    with the correct letter appended, and what follows the last two positions (the letter, then
    the end of the turn, so that greedy decoding says the letter and stops)."""

    embeds: Float[torch.Tensor, "pos d_model"]
    positions: Int[torch.Tensor, "axis pos"]
    answer_id: int
    end_id: int
    letter_ids: tuple[int, ...]
    task: str


def _examples(m: AVModel, samples, progress: str) -> tuple[list[Example], list[Example]]:
    """Each sample as the LLM sees it, answered, and its text lookup (see `_lookup`)."""
    from tqdm import tqdm

    end = m.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    embed = m.hf.get_input_embeddings()
    out, lookups = [], []
    for s in tqdm(samples, desc=progress, leave=False):
        p = m.prepare(s)
        e = m.encode(p)
        answer = p.answer_ids[s.answer]
        with torch.no_grad():
            embeds = torch.cat([e.inputs_embeds[0], embed(torch.tensor([answer]))])
        positions = torch.cat([e.position_ids[:, 0], e.position_ids[:, 0, -1:] + 1], dim=1)
        out.append(Example(embeds, positions, answer, end, tuple(p.answer_ids), planted.task_of(s)))
        lookups.append(_lookup(m, p, out[-1], embed))
    return out, lookups


def _lookup(m: AVModel, p, example: Example, embed: torch.nn.Module) -> Example:
    """The question's text lookup: the correct option's text, then the prompt from its first option
    letter on (the options and the end of the turn), answered with the same letter, no media at all.
    Which letter stands before a given text is the matching that shuffled options need; learned on
    these short prompts first, it is learned in a few hundred steps (step 3 of the recipe)."""
    tok = m.processor.tokenizer
    first = p.tokens.roles.index("option_letter")
    text = p.sample.options[p.sample.answer]
    ids = [*tok.encode(text + "\n"), *p.input_ids[0, first:].tolist(), example.answer_id]
    with torch.no_grad():
        embeds = embed(torch.tensor(ids))
    positions = torch.arange(len(ids)).expand(len(example.positions), -1).clone()
    task = example.task.replace(" (", " lookup (", 1)
    return Example(embeds, positions, example.answer_id, example.end_id, example.letter_ids, task)


def _batch(examples: list[Example]):
    """Right-padded inputs: embeddings, positions (continued past each end), mask, last index."""
    n, d = max(len(e.embeds) for e in examples), examples[0].embeds.shape[-1]
    embeds = torch.zeros(len(examples), n, d)
    positions = torch.zeros(3, len(examples), n, dtype=torch.long)
    mask = torch.zeros(len(examples), n, dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e.embeds)
        embeds[i, :k], positions[:, i, :k], mask[i, :k] = e.embeds, e.positions, 1
        positions[:, i, k:] = e.positions[:, -1:] + torch.arange(1, n - k + 1)
    last = mask.sum(1) - 1
    return embeds, positions, mask, last


def _answer_logits(m: AVModel, examples: list[Example]) -> Float[torch.Tensor, "batch 2 d_vocab"]:
    """The logits at the prompt's last position (the letter's) and at the letter (the end's)."""
    embeds, positions, mask, last = _batch(examples)
    hidden = m.llm_module(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                          use_cache=False).last_hidden_state
    rows = torch.arange(len(examples))[:, None]
    return m.lm_head_module(hidden[rows, torch.stack([last - 1, last], dim=1)])


def accuracy(m: AVModel, examples: list[Example]) -> dict[str, float]:
    """Per task, the share of questions whose most probable option letter is the correct one."""
    hits = defaultdict(list)
    with torch.no_grad():
        for i in range(0, len(examples), 64):
            chunk = examples[i:i + 64]
            logits = _answer_logits(m, chunk)[:, 0]
            for e, row in zip(chunk, logits):
                letters = list(e.letter_ids)
                hits[e.task].append(letters[int(row[letters].argmax())] == e.answer_id)
    return {task: sum(h) / len(h) for task, h in sorted(hits.items())}


def train(m: AVModel, examples: list[Example], recipe: Recipe, evaluate: list[Example] | None = None,
          every: int = 250) -> list[dict]:
    """Train ``m``'s LLM on ``examples``; the log of (step, loss[, held-out accuracy every ``every`` steps]) rows."""
    from tqdm import tqdm

    for p in m.hf.parameters():
        p.requires_grad_(False)
    params = [p for n, p in m.llm_module.named_parameters() if "embed_tokens" not in n]
    params += list(m.lm_head_module.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=recipe.lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay)

    def schedule(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        done = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    g = torch.Generator().manual_seed(recipe.seed)
    log, smooth, start = [], None, time.time()
    m.llm_module.train()
    bar = tqdm(range(recipe.steps), desc=f"training a planted {recipe.family}", leave=False)
    for step in bar:
        chunk = [examples[int(i)] for i in torch.randint(len(examples), (recipe.batch,), generator=g)]
        logits = _answer_logits(m, chunk)
        targets = torch.tensor([[e.answer_id, e.end_id] for e in chunk])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        bar.set_postfix(loss=f"{smooth:.3f}")
        row = {"step": step, "loss": smooth, "seconds": time.time() - start}
        if evaluate and (step + 1) % every == 0:
            m.llm_module.eval()
            row["accuracy"] = accuracy(m, evaluate)
            m.llm_module.train()
        log.append(row)
    m.llm_module.eval()
    for p in params:
        p.requires_grad_(False)
    return log




def builders(family: str) -> dict[str, Builder]:
    """The planted models of ``family`` (a `Family` name), name -> builder."""
    return {name: Builder(name) for name, r in RECIPES.items() if r.family == family}


def _gain(m: AVModel, recipe: Recipe) -> None:
    """Scale the audio encoder's input convolutions (Whisper's ``conv1`` and ``conv2``) by ``audio_gain``,
    in video-SALMONN 2+ its Q-Former's cross-attention outputs by ``qformer_gain``, and the vision
    encoder's output (its patch merger's last linear layer, weight and bias) by ``video_gain``."""
    tower = m.hf.get_submodule(m.paths["audio_encoder"])
    convs = [mod for name, mod in tower.named_modules() if name.rsplit(".", 1)[-1] in ("conv1", "conv2")]
    mixes = [mod for name, mod in tower.named_modules() if name.endswith("crossattention.output.dense")]
    vision = m.hf.get_submodule(m.paths["vision_encoder"])
    outs = [mod for name, mod in vision.named_modules() if name.endswith("merger.mlp.2")]
    if len(convs) != 2 or (recipe.qformer_gain != 1 and not mixes) or (recipe.video_gain != 1 and len(outs) != 1):
        raise ModelError(f"the audio encoder has {len(convs)} conv1/conv2 and {len(mixes)} Q-Former cross-attention "
                         f"outputs, the vision encoder {len(outs)} merger.mlp.2: recipe gains (audio "
                         f"{recipe.audio_gain}, Q-Former {recipe.qformer_gain}, video {recipe.video_gain}) do not fit "
                         f"the {recipe.family} family")
    with torch.no_grad():
        for conv in convs:
            conv.weight.mul_(recipe.audio_gain)
        for dense in mixes:
            dense.weight.mul_(recipe.qformer_gain)
        if recipe.video_gain != 1:
            outs[0].weight.mul_(recipe.video_gain)
            outs[0].bias.mul_(recipe.video_gain)


def _random_model(recipe: Recipe, name: str, path: Path, seed: int) -> AVModel:
    """The random model of ``recipe``'s family and size, written at ``path`` and loaded back."""
    size = dict(d_model=recipe.d_model, n_layers=recipe.n_layers, n_heads=recipe.n_heads,
                n_kv_heads=recipe.n_kv_heads, d_mlp=recipe.d_mlp)
    if recipe.family == "qwen2.5-omni":
        from avmech.models.omni import load_omni
        from avmech.models.omni_tiny import OMNI_SIZES, write_omni

        write_omni(path, seed, size, OMNI_SIZES["tiny-omni"][1])
        load = load_omni
    elif recipe.family == "video-salmonn2+":
        from avmech.models.salmonn import load_salmonn
        from avmech.models.salmonn_tiny import SALMONN_SIZES, write_salmonn

        write_salmonn(path, seed, size, SALMONN_SIZES["tiny-salmonn"][1])
        load = load_salmonn
    else:
        raise ModelError(f"no planted recipe for the {recipe.family!r} family: use 'qwen2.5-omni' or 'video-salmonn2+'")
    return load(path, name=name, media_policy=json.loads((path / MEDIA_POLICY_FILE).read_text()),
                dtype=torch.float32)


@dataclass(frozen=True)
class TrainingSet:
    """A recipe's random model, its gains applied (step 1), and its questions as that model's LLM sees
    them (step 2): the training set and the held-out one, each with its text lookups."""

    model: AVModel
    train: list[Example]
    lookups: list[Example]
    held_out: list[Example]
    held_out_lookups: list[Example]


def training_set(recipe: Recipe, name: str, folder: Path, seed: int = 0) -> TrainingSet:
    """Steps 1 and 2 of ``recipe`` for the model ``name`` built with ``seed``, written under ``folder``:
    what `train` starts from (the build, and a benchmark that times the training alone)."""
    m = _random_model(recipe, name, folder / "random", recipe.seed + seed)
    _gain(m, recipe)
    train, lookups = _examples(m, _questions(recipe, folder / "train", recipe.n_train, 1000 + seed),
                               f"{name}: encoding the training set")
    held_out, held_out_lookups = _examples(m, _questions(recipe, folder / "held-out", recipe.n_eval, 2000 + seed),
                                           f"{name}: encoding the held-out set")
    return TrainingSet(m, train, lookups, held_out, held_out_lookups)


def _questions(recipe: Recipe, root: Path, n: int, seed: int) -> list:
    samples = read(recipe.dataset, planted.write(recipe.dataset, root, n=n, seed=seed, tasks=recipe.tasks,
                                                 variants=recipe.variants))
    return [replace(s, layout=recipe.layout) for s in samples]


@dataclass(frozen=True)
class Builder:
    """The registry's builder of the planted model ``name``; its cache tag is the recipe's digest."""

    name: str

    @property
    def cache_tag(self) -> str:
        return f"-{RECIPES[self.name].digest()}"

    def __call__(self, path: Path, seed: int) -> None:
        build(self.name, path, seed)


def build(name: str, path: Path, seed: int = 0) -> None:
    """Train the planted model ``name`` with ``seed`` and save it at ``path`` (see the module docstring)."""
    recipe = RECIPES[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed + seed)
    try:
        _build(name, recipe, path, seed)
    finally:
        torch.set_num_threads(threads)


def _build(name: str, recipe: Recipe, path: Path, seed: int) -> None:
    from avmech.models.tiny import write_atomically

    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        q = training_set(recipe, name, Path(tmp), seed)
        prepared = time.time() - start
        m, examples, lookups, held_out, held_out_lookups = q.model, q.train, q.lookups, q.held_out, q.held_out_lookups
        phases = []
        if recipe.lookup_steps:
            phases.append(train(m, lookups, replace(recipe, steps=recipe.lookup_steps, batch=recipe.lookup_batch)))
        if recipe.fixed_steps:
            in_order = f"({planted.VARIANT_NAMES['fixed']})"
            fixed = [e for e in examples if e.task.endswith(in_order)]
            phases.append(train(m, fixed, replace(recipe, steps=recipe.fixed_steps)))
            examples = [e for e in examples if not e.task.endswith(in_order)]
            examples += fixed[:round(recipe.fixed_share * len(fixed))]
        phases.append(train(m, examples + lookups[:round(recipe.lookup_share * len(lookups))], recipe))
        report = {"recipe": asdict(recipe) | {"digest": recipe.digest()}, "seconds_data": round(prepared, 1),
                  "seconds_training": round(sum(log[-1]["seconds"] for log in phases), 1),
                  "final_loss": phases[-1][-1]["loss"], "held_out_accuracy": accuracy(m, held_out),
                  "n_held_out": len(held_out)}
        if recipe.lookup_steps:
            report["held_out_lookup_accuracy"] = accuracy(m, held_out_lookups)
        if min(report["held_out_accuracy"].values()) < MIN_ACCURACY:
            raise ModelError(f"{name} did not learn its tasks (held-out accuracy {report['held_out_accuracy']}, below "
                             f"{MIN_ACCURACY:.0%} on some; recipe {recipe.digest()}): it was not saved, since its "
                             "pathways would not be known; report this with your torch version")

        def write(folder: Path) -> None:
            m.save_pretrained(folder)
            (folder / PLANTED_FILE).write_text(json.dumps(report, indent=2) + "\n")

        write_atomically(path, write)
