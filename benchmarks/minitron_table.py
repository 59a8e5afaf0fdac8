"""The Minitron findings at small scale: seven students of SmolLM2-135M-Instruct, one token budget (issue 13, table).

    .venv/bin/python benchmarks/minitron_table.py --bf16              # 300k tokens per student, 7 variants: 96 min
                                                                      # on a 2-core CPU with AVX512-BF16
    .venv/bin/python benchmarks/minitron_table.py --tokens 5000000 --batch 16       # where a GPU is lent
    .venv/bin/python benchmarks/minitron_table.py --tokens 4096 --eval-points 2 --eval-windows 2 --calib-samples 8 \\
        --search-candidates 4 --search-blocks 2 --threads 1 --out benchmarks/results/minitron_table_smoke.md

Teacher: the embedded SmolLM2-135M-Instruct GGUF. Data: ``../shared/data/wiki_train.txt`` (one article per line) and
``../shared/data/c4_calib.jsonl``; the last ``--held-out`` fraction of each file's documents is held out and never
trained, calibrated or searched on. Held-out perplexity: ``--eval-windows`` non-overlapping windows of ``--seq``
tokens from each file's held-out slice (the same token ids for every model, teacher included); the table reports
``exp`` of the mean NLL over all of them and over each source.

Every student has about ``--ratio`` of the teacher's non-embedding parameters and trains on the same
``--tokens`` (rounded up to whole optimizer steps of ``--batch`` x ``--seq`` tokens): the same packed training blocks
(both files' training slices packed separately, blocks shuffled together with ``--seed``), the same Trainer seed and
therefore the same batch order, the same optimizer (AdamW, ``--lr``, ``--lr-scheduler`` with ``--warmup`` steps, no
weight decay). A budget larger than the training blocks repeats them (Trainer epochs, reshuffled by the seed).

1. width-pruned + logit KD: importance scores (``estimate_importance`` on ``--calib-samples`` c4 documents, the
   library's default per-document scoring), widths chosen zero-shot by ``choose_widths`` (every hidden / ffn / head
   architecture within ``--tolerance`` of the budget, ranked by calibration loss right after pruning), all layers
   kept; online full-vocabulary forward KL at T=1 (``DistillationTrainer``).
2. depth-pruned + logit KD: the layer count whose non-embedding parameters are closest to the budget, layers dropped
   by the best of ``--depth-criteria`` (default ``block_influence``, the first of ``DEPTH_PREFERENCE`` and the best
   in ``benchmarks/prune_quality.py``; with several, the lowest calibration loss right after pruning wins).
3. the architecture of (1), randomly initialised (``from_config``, seeded), + logit KD.
4. the pruned student of (1) + cross-entropy only: a plain ``trl.SFTTrainer`` with the same arguments. There is no
   weight on the KD term to set to zero (``ce_weight`` only adds cross-entropy), so the honest "no teacher" run is the
   trainer ``DistillationTrainer`` subclasses, with no teacher in memory.
5. teacher corrected first (``correct_teacher``: full fine-tuning, or ``--correction-lora``, on the text of the same
   training blocks for ``--correction-tokens``), then rescored, pruned to the widths of (1) (the architecture is
   fixed so that only the teacher differs) and distilled from the corrected teacher.
6. as (1), trained from the offline sampled top-k cache (k=``--top-k``, exact head k/2, ``write_teacher_cache`` of the
   same training blocks) with ``kd_loss="topk_kl"``, ``topk_tail="sampled"`` and no teacher in memory.
7. as (1) plus the intermediate-state loss (``intermediate_layer_map=--intermediate-map``, cosine, balanced).

``--cache-for`` (default ``2,3``) trains those variants from the cache of (6) instead of the online teacher: the
cache is written once and saves their teacher forwards (its agreement with online KD is measured in
``benchmarks/topk_real.py``); the table says which signal each variant had, and (6) is their like-for-like reference.

Every variant is evaluated before training and at ``--eval-points`` evenly spaced points of its budget (a Trainer
callback; evaluation time is kept out of the training time). Writes ``--out`` (Markdown: the table, the expected
relations checked at the end of the budget, the exact command, the machine, wall and CPU time per variant), a PNG of
held-out perplexity versus training tokens and a JSON file of every number, next to it. A budget under the issue's
300k tokens is labelled a plumbing check in the output.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO.parent / "shared" / "data" / "wiki_train.txt"
C4 = REPO.parent / "shared" / "data" / "c4_calib.jsonl"
ISSUE_MIN_TOKENS = 300_000


@dataclass(frozen=True)
class Variant:
    """One row of the table: which student (``width``, ``depth``, ``random``, ``corrected``), which training signal
    (``kd`` online full-vocabulary forward KL, ``topk`` the offline sampled cache, ``ce`` cross-entropy only, ``kd+hidden``
    KD plus the intermediate-state loss) and whether the teacher is the corrected one."""

    number: int
    name: str
    student: str
    signal: str


VARIANTS = {
    1: Variant(1, "width-pruned + KD", "width", "kd"),
    2: Variant(2, "depth-pruned + KD", "depth", "kd"),
    3: Variant(3, "random init (arch of 1) + KD", "random", "kd"),
    4: Variant(4, "width-pruned + CE only", "width", "ce"),
    5: Variant(5, "corrected teacher, then as 1", "corrected", "kd"),
    6: Variant(6, "as 1, offline sampled top-k cache", "width", "topk"),
    7: Variant(7, "as 1 + intermediate-state loss", "width", "kd+hidden"),
}


@dataclass
class Run:
    """What one variant produced: its architecture, parameters, the held-out curve ``[(tokens, nll_all, nll_wiki,
    nll_c4)]``, and seconds (``prep``: work only this variant needs, e.g. the correction; ``train``: the Trainer's
    wall time less evaluation; ``cpu``: process CPU seconds of that training; ``eval``: the evaluations)."""

    variant: int
    name: str
    signal: str
    architecture: dict
    params: int
    curve: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    train_tokens: int = 0
    final_train_loss: float | None = None


# --- arguments ---------------------------------------------------------------------------------------------------
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=ISSUE_MIN_TOKENS, help="training tokens per student")
    p.add_argument("--eval-points", type=int, default=6, help="evaluations spread evenly over the budget (plus 0)")
    p.add_argument("--variants", default="1,2,3,4,5,6,7", help="comma-separated variant numbers (1-7)")
    p.add_argument("--seed", type=int, default=0, help="seed of the block shuffle, the Trainer and the random init")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default="benchmarks/results/minitron_table.md", help="Markdown report (PNG, JSON beside)")
    p.add_argument("--batch", type=int, default=4, help="sequences per optimizer step")
    p.add_argument("--seq", type=int, default=256, help="tokens per training block and per held-out window")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast for training, the correction and the cache write (fp32 master weights and "
                        "fp32 held-out evaluation); about 2x faster on CPUs with AVX512-BF16")
    p.add_argument("--lr-scheduler", default="constant_with_warmup",
                   help="transformers scheduler; constant keeps the intermediate points meaningful as shorter budgets")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 2 %% of the steps, at least 1)")
    p.add_argument("--ratio", type=float, default=0.5, help="student budget: fraction of teacher non-embedding params")
    p.add_argument("--tolerance", type=float, default=0.05, help="width search: allowed deviation from the budget")
    p.add_argument("--held-out", type=float, default=0.1, help="fraction of each file's documents held out")
    p.add_argument("--eval-windows", type=int, default=16, help="held-out windows per source file")
    p.add_argument("--calib-samples", type=int, default=64, help="c4 documents the importance scores come from")
    p.add_argument("--depth-criteria", default="block_influence",
                   help="comma-separated depth criteria to score; the best zero-shot one is used")
    p.add_argument("--search-blocks", type=int, default=16, help="calibration blocks of the zero-shot ranking")
    p.add_argument("--search-candidates", type=int, default=64, help="width candidates ranked (closest to budget)")
    p.add_argument("--widths", default=None, help='JSON width targets for (1), skipping the search, e.g. '
                   '\'{"hidden_size": 384, "intermediate_size": 1024, "num_attention_heads": 6, "num_key_value_heads": 3}\'')
    p.add_argument("--top-k", type=int, default=64, help="ids per token of the offline cache")
    p.add_argument("--cache-for", default="2,3", help="variants besides 6 trained from the offline cache ('' = none)")
    p.add_argument("--intermediate-map", default="auto", help="intermediate_layer_map of variant 7")
    p.add_argument("--correction-tokens", type=int, default=None, help="teacher-correction tokens (default: --tokens)")
    p.add_argument("--correction-lr", type=float, default=None, help="default: the correct-teacher stage's (2e-5 full)")
    p.add_argument("--correction-lora", action="store_true", help="correct with a merged LoRA adapter, not all weights")
    args = p.parse_args(argv)
    args.variant_list = _numbers(p, "--variants", args.variants)
    args.cache_list = _numbers(p, "--cache-for", args.cache_for)
    if not args.variant_list:
        p.error("--variants is empty; give numbers from 1 to 7")
    if set(args.cache_list) - {1, 2, 3}:
        p.error(f"--cache-for {args.cache_for!r}: only 1, 2 and 3 can train from the cache of (6) (4 has no teacher, "
                "5 distils from the corrected teacher, 7 needs the teacher's hidden states)")
    for name in ("tokens", "eval_points", "batch", "eval_windows", "calib_samples", "search_blocks", "top_k"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def _numbers(p, flag: str, text: str) -> list[int]:
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        p.error(f"{flag} {text!r}: give comma-separated numbers from 1 to 7")
    if any(n not in VARIANTS for n in out):
        p.error(f"{flag} {text!r}: variants are numbered 1 to 7")
    return out


# --- data ----------------------------------------------------------------------------------------------------------
@dataclass
class Data:
    """Token tensors every variant shares: ``train`` blocks (in the shuffled order), ``held`` windows (wiki first,
    then c4; ``n_wiki`` of them from wiki), ``calib_texts`` (c4 training documents), ``search`` calibration blocks."""

    train: object
    held: object
    n_wiki: int
    calib_texts: list
    search: object
    facts: dict


def load_data(tok, args) -> Data:
    import torch

    from hf_minitron.data import load_texts, split_held_out, token_blocks
    from hf_minitron.evaluation import eval_windows

    wiki_train, wiki_held = split_held_out(load_texts(WIKI), args.held_out)
    c4_train, c4_held = split_held_out(load_texts(C4), args.held_out)
    held_wiki = eval_windows(wiki_held, tok, args.seq, args.eval_windows)
    held_c4 = eval_windows(c4_held, tok, args.seq, args.eval_windows)
    blocks = torch.cat([token_blocks(wiki_train, tok, args.seq), token_blocks(c4_train, tok, args.seq)])
    order = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(args.seed))
    steps = math.ceil(args.tokens / (args.batch * args.seq))
    train = blocks[order][: steps * args.batch]  # all of them when the budget exceeds one pass
    n_wiki_blocks = token_blocks(wiki_train, tok, args.seq).shape[0]
    facts = {"train_documents": {"wiki": len(wiki_train), "c4": len(c4_train)},
             "held_documents": {"wiki": len(wiki_held), "c4": len(c4_held)},
             "train_blocks_available": {"wiki": n_wiki_blocks, "c4": blocks.shape[0] - n_wiki_blocks},
             "train_blocks_used": int(train.shape[0]), "steps": steps, "tokens": steps * args.batch * args.seq,
             "epochs": steps * args.batch / train.shape[0],
             "held_windows": {"wiki": int(held_wiki.shape[0]), "c4": int(held_c4.shape[0])}}
    return Data(train=train, held=torch.cat([held_wiki, held_c4]), n_wiki=int(held_wiki.shape[0]),
                calib_texts=c4_train, search=token_blocks(c4_train, tok, args.seq, args.search_blocks), facts=facts)


def held_out_nll(model, data: Data) -> tuple[float, float, float]:
    """``(all, wiki, c4)`` mean NLL on the held-out windows (every window predicts ``seq - 1`` tokens)."""
    from hf_minitron.evaluation import mean_nll

    wiki = mean_nll(model, data.held[: data.n_wiki])
    c4 = mean_nll(model, data.held[data.n_wiki:])
    n_c4 = data.held.shape[0] - data.n_wiki
    return (wiki * data.n_wiki + c4 * n_c4) / data.held.shape[0], wiki, c4


# --- students ------------------------------------------------------------------------------------------------------
def score(model, data: Data, tok, args, n_drop: int):
    from hf_minitron.importance import estimate_importance

    criteria = tuple(c for c in args.depth_criteria.split(",") if c)
    return estimate_importance(model, data.calib_texts, tokenizer=tok, seq_len=args.seq,
                               num_samples=args.calib_samples, batch_size=4, depth_criteria=criteria,
                               block_sizes=(n_drop,) if "block" in criteria else (),
                               loss_num_samples=args.calib_samples)


def depth_layers(teacher, budget: int) -> int:
    """The layer count (teacher widths) whose non-embedding parameter count is closest to ``budget``."""
    from hf_minitron.search import Architecture, ParameterCount

    count, src = ParameterCount(teacher), Architecture.of(teacher)
    return min(range(1, src.num_hidden_layers + 1),
               key=lambda n: abs(count(Architecture(**{**src.targets(), "num_hidden_layers": n})) - budget))


def choose_depth(teacher, scores, data: Data, n_layers: int, args) -> tuple[dict, dict]:
    """``(targets, zero-shot calibration loss per criterion)``: the criterion whose pruned model has the lowest loss."""
    from hf_minitron.evaluation import mean_nll
    from hf_minitron.pruning import prune_model

    losses = {}
    for crit in (c for c in args.depth_criteria.split(",") if c):
        student = prune_model(teacher, {"num_hidden_layers": n_layers, "depth_criterion": crit}, scores)
        losses[crit] = mean_nll(student, data.search)
    best = min(losses, key=losses.get)
    return {"num_hidden_layers": n_layers, "depth_criterion": best}, losses


def random_student(like, seed: int):
    """A model of ``like``'s config with fresh weights (the family's own initialisation, seeded)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(like.config), dtype=torch.float32)
    return model.to(next(like.parameters()).device)


def correct(teacher, tok, data: Data, args, tmp: Path):
    """The teacher fine-tuned on the text of the training blocks (``correct_teacher``), on a copy."""
    from hf_minitron.correction import correct_teacher

    model = copy.deepcopy(teacher)
    for p in model.parameters():  # a teacher handed to a DistillationTrainer comes back frozen
        p.requires_grad_(True)
    tokens = args.correction_tokens or args.tokens
    steps = math.ceil(tokens / (args.batch * args.seq))
    texts = tok.batch_decode(data.train)  # the same text; SFT packing re-tokenizes and re-cuts it ("wrapped")
    fields = dict(use_lora=args.correction_lora, max_steps=steps, per_device_train_batch_size=args.batch,
                  max_length=args.seq, packing=True, packing_strategy="wrapped", seed=args.seed, report_to=[],
                  disable_tqdm=True, logging_steps=max(1, steps // 10), checkpoint_dir=str(tmp / "correction"),
                  lr_scheduler_type=args.lr_scheduler, warmup_steps=warmup(args, steps), dataloader_num_workers=0,
                  bf16=args.bf16)
    if args.correction_lr is not None:
        fields["learning_rate"] = args.correction_lr
    corrected = correct_teacher(model, texts, tokenizer=tok, **fields)
    return corrected.eval(), steps * args.batch * args.seq


# --- training ------------------------------------------------------------------------------------------------------
def autocast(args):
    """bf16 autocast on the run's device under ``--bf16``; a no-op otherwise."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16)


def warmup(args, steps: int) -> int:
    return args.warmup if args.warmup is not None else max(1, round(0.02 * steps))


def eval_steps(steps: int, points: int) -> list[int]:
    return sorted({max(1, round(k * steps / points)) for k in range(1, points + 1)})


def make_curve_callback(run: Run, data: Data, steps_to_eval: list[int], tokens_per_step: int):
    """A TrainerCallback that appends the held-out NLLs at ``steps_to_eval`` and times itself."""
    from transformers import TrainerCallback

    class HeldOutCurve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in steps_to_eval:
                t, cpu = time.perf_counter(), time.process_time()
                run.curve.append((state.global_step * tokens_per_step, *held_out_nll(model, data)))
                run.seconds["eval"] = run.seconds.get("eval", 0.0) + time.perf_counter() - t
                run.seconds["eval_cpu"] = run.seconds.get("eval_cpu", 0.0) + time.process_time() - cpu
                print(f"  step {state.global_step}: held-out ppl {math.exp(run.curve[-1][1]):.2f}", flush=True)

    return HeldOutCurve()


def trainer_fields(args, steps: int, out_dir: Path) -> dict:
    import torch

    cpu = not torch.cuda.is_available()
    return dict(output_dir=str(out_dir), use_cpu=cpu, bf16=args.bf16, per_device_train_batch_size=args.batch,
                max_steps=steps, learning_rate=args.lr, lr_scheduler_type=args.lr_scheduler,
                warmup_steps=warmup(args, steps), weight_decay=0.0, logging_steps=max(1, steps // 10), report_to=[],
                save_strategy="no", activation_checkpointing=False, max_length=args.seq, seed=args.seed,
                data_seed=args.seed, dataloader_num_workers=0, disable_tqdm=True)


def build_trainer(student, variant: Variant, teacher, tok, data: Data, args, out_dir: Path, cache_dir, steps: int):
    """The trainer of one variant: ``SFTTrainer`` for CE only, ``DistillationTrainer`` otherwise (from the cache
    when ``cache_dir`` is given)."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from hf_minitron.distill import DistillationConfig, DistillationTrainer

    fields = trainer_fields(args, steps, out_dir)
    train = datasets.Dataset.from_dict({"input_ids": data.train.tolist()})
    if variant.signal == "ce":
        return SFTTrainer(student, args=SFTConfig(**fields), train_dataset=train, processing_class=tok)
    if cache_dir is not None:
        config = DistillationConfig(**fields, kd_loss="topk_kl", topk_tail="sampled", teacher_cache=str(cache_dir))
        return DistillationTrainer(student, args=config, processing_class=tok)
    hidden = args.intermediate_map if variant.signal == "kd+hidden" else None
    config = DistillationConfig(**fields, kd_loss="forward_kl", intermediate_layer_map=hidden)
    return DistillationTrainer(student, args=config, train_dataset=train, processing_class=tok,
                               teacher_model=teacher, teacher_processing_class=tok)


def train_variant(student, variant: Variant, teacher, tok, data: Data, args, tmp: Path, cache_dir=None) -> Run:
    """Evaluate ``student`` untrained, train it for the budget (evaluating at the eval points), return its run."""
    from hf_minitron import count_parameters
    from hf_minitron.search import Architecture

    steps, per_step = data.facts["steps"], args.batch * args.seq
    signal = "topk (cache)" if cache_dir is not None else variant.signal
    run = Run(variant.number, variant.name, signal, asdict(Architecture.of(student)), count_parameters(student)[1])
    t = time.perf_counter()
    run.curve.append((0, *held_out_nll(student, data)))
    run.seconds["eval"] = time.perf_counter() - t
    print(f"variant {variant.number} ({variant.name}, {signal}): {run.params:,} non-embedding params; untrained "
          f"held-out ppl {math.exp(run.curve[0][1]):.2f}", flush=True)
    trainer = build_trainer(student.train(), variant, teacher, tok, data, args, tmp / f"run-{variant.number}",
                            cache_dir, steps)
    trainer.add_callback(make_curve_callback(run, data, eval_steps(steps, args.eval_points), per_step))
    eval_before = run.seconds["eval"]
    wall, cpu = time.perf_counter(), time.process_time()
    output = trainer.train()
    run.seconds["train"] = time.perf_counter() - wall - (run.seconds["eval"] - eval_before)
    run.seconds["cpu"] = time.process_time() - cpu - run.seconds.get("eval_cpu", 0.0)
    run.train_tokens = int(output.global_step) * per_step
    run.final_train_loss = float(output.training_loss)
    del trainer
    return run


# --- the variants ----------------------------------------------------------------------------------------------------
class Bench:
    """The shared state of one benchmark run: teacher, data, scores, the chosen architectures, the cache."""

    def __init__(self, args, teacher, tok, data: Data, tmp: Path):
        self.args, self.teacher, self.tok, self.data, self.tmp = args, teacher, tok, data, tmp
        self.setup: dict = {}
        self.cache_dir = None
        self.cache_seconds = 0.0

    def prepare(self) -> None:
        """Scores, the width targets of (1) and the depth targets of (2), with their zero-shot losses and times."""
        from hf_minitron import count_parameters
        from hf_minitron.search import budget_from, choose_widths

        args, teacher = self.args, self.teacher
        self.teacher_params = count_parameters(teacher)[1]
        self.budget = budget_from(teacher, target_ratio=args.ratio)
        n_layers = depth_layers(teacher, self.budget)
        t = time.perf_counter()
        self.scores = score(teacher, self.data, self.tok, args, teacher.config.num_hidden_layers - n_layers)
        self.setup["importance_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if args.widths:
            self.widths = json.loads(args.widths)
        else:
            self.widths = choose_widths(teacher, self.scores, self.data.search, target_ratio=args.ratio,
                                        tolerance=args.tolerance, num_samples=args.search_blocks, seq_len=args.seq,
                                        max_candidates=args.search_candidates, progress=True)
        self.setup["width_search_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.depth, self.setup["depth_zero_shot_loss"] = choose_depth(teacher, self.scores, self.data, n_layers, args)
        self.setup["depth_choice_s"] = time.perf_counter() - t
        self.setup.update(budget=self.budget, widths=self.widths, depth=self.depth)
        print(f"budget {self.budget:,} non-embedding params; widths {self.widths}; depth {self.depth} "
              f"(zero-shot calibration loss {self.setup['depth_zero_shot_loss']})", flush=True)

    def teacher_cache(self):
        """The sampled top-k cache of the training blocks (written once)."""
        from hf_minitron.distill.teacher_cache import write_teacher_cache

        if self.cache_dir is None:
            self.cache_dir = self.tmp / "cache"
            t = time.perf_counter()
            # the teacher's forward under the run's autocast, as the online variants see it (only the forward:
            # the cache's own fp32/fp16 tensor work stays outside autocast)
            self.teacher.forward = autocast(self.args)(self.teacher.forward)
            try:
                write_teacher_cache(self.teacher, self.tok, self.data.train, self.cache_dir, top_k=self.args.top_k,
                                    kind="sampled", batch_size=4, shard_size=64, teacher_source="default",
                                    seed=self.args.seed)
            finally:
                del self.teacher.forward  # back to the class's forward
            self.cache_seconds = time.perf_counter() - t
        return self.cache_dir

    def student(self, kind: str):
        import torch

        from hf_minitron.pruning import prune_model

        torch.manual_seed(self.args.seed)
        if kind == "width":
            return prune_model(self.teacher, self.widths, self.scores)
        if kind == "depth":
            return prune_model(self.teacher, self.depth, self.scores)
        if kind == "random":
            return random_student(prune_model(self.teacher, self.widths, self.scores), self.args.seed)
        raise ValueError(kind)

    def run(self, variant: Variant) -> Run:
        if variant.student == "corrected":
            return self.run_corrected(variant)
        cached = variant.signal == "topk" or variant.number in self.args.cache_list
        t = time.perf_counter()
        cache = self.teacher_cache() if cached else None
        prep = time.perf_counter() - t
        run = train_variant(self.student(variant.student), variant, self.teacher, self.tok, self.data, self.args,
                            self.tmp, cache)
        run.seconds["prep"] = prep  # the cache write is charged to the first variant that needs it
        return run

    def run_corrected(self, variant: Variant) -> Run:
        from hf_minitron.pruning import prune_model

        t = time.perf_counter()
        corrected, tokens = correct(self.teacher, self.tok, self.data, self.args, self.tmp)
        self.setup["corrected_teacher_nll"] = held_out_nll(corrected, self.data)
        self.setup["correction_tokens"] = tokens
        n_drop = self.teacher.config.num_hidden_layers - self.depth["num_hidden_layers"]
        scores = score(corrected, self.data, self.tok, self.args, n_drop)
        student = prune_model(corrected, self.widths, scores)
        prep = time.perf_counter() - t
        run = train_variant(student, variant, corrected, self.tok, self.data, self.args, self.tmp)
        run.seconds["prep"] = prep
        return run


# --- report --------------------------------------------------------------------------------------------------------
def machine_facts() -> dict:
    import torch
    import transformers
    import trl

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "commit": commit, "load_start": os.getloadavg()}


def _ppl(nll: float) -> str:
    ppl = math.exp(nll)
    return f"{ppl:.3g}" if ppl >= 1e5 else f"{ppl:.2f}"


def expectations(runs: dict[int, Run]) -> list[str]:
    """The papers' expected relations, checked on the final held-out perplexity of the variants that ran."""
    final = {n: math.exp(r.curve[-1][1]) for n, r in runs.items()}
    checks = [((1, 2), "(1) < (2): width beats depth after distillation", lambda a, b: a < b),
              ((2, 3), "(2) ≪ (3): pruning beats random init (≪ read as at least 2x lower perplexity)",
               lambda a, b: 2 * a <= b),
              ((1, 3), "(1) ≪ (3) (at least 2x)", lambda a, b: 2 * a <= b),
              ((1, 4), "(1) < (4): logit KD beats cross-entropy only", lambda a, b: a < b),
              ((5, 1), "(5) ≤ (1): correcting the teacher first helps or does no harm", lambda a, b: a <= b),
              ((6, 1), "(6) ≈ (1): offline sampled top-k within 2 % of online", lambda a, b: abs(a / b - 1) <= 0.02)]
    lines = []
    for (x, y), text, holds in checks:
        if x in final and y in final:
            verdict = "holds" if holds(final[x], final[y]) else "**does not hold**"
            lines.append(f"- {text}: ({x}) {final[x]:.2f} vs ({y}) {final[y]:.2f} → {verdict}")
    return lines


def markdown(args, runs: dict[int, Run], teacher_nll, bench: Bench, machine: dict, wall: float) -> str:
    d = bench.data.facts
    pct = lambda n: f"{n / bench.teacher_params:.1%}"  # noqa: E731
    lines = [f"# Minitron findings at small scale: SmolLM2-135M-Instruct, {d['tokens']:,} tokens per student", ""]
    if d["tokens"] < ISSUE_MIN_TOKENS:
        lines += [f"> **Not the table.** {d['tokens']:,} training tokens per student is below the issue's "
                  f"{ISSUE_MIN_TOKENS:,}: a short probe or a plumbing check; compare its variants only with each other.",
                  ""]
    lines += [f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}`", "",
              f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, device "
              f"{machine['device']}; load average at start {tuple(round(x, 1) for x in machine['load_start'])}, at end "
              f"{tuple(round(x, 1) for x in os.getloadavg())}; Python {machine['python']}, torch {machine['torch']}, "
              f"transformers {machine['transformers']}, trl {machine['trl']}, commit {machine['commit']}. "
              f"Total wall time {wall / 60:.1f} min.", "",
              f"Data: training blocks of {args.seq} tokens from the first {1 - args.held_out:.0%} of the documents of "
              f"wiki_train.txt ({d['train_blocks_available']['wiki']} blocks) and c4_calib.jsonl "
              f"({d['train_blocks_available']['c4']} blocks), shuffled together with seed {args.seed}; "
              f"{d['train_blocks_used']} blocks used, {d['steps']} steps of {args.batch} x {args.seq} = "
              f"{d['tokens']:,} tokens ({d['epochs']:.2f} epochs of the blocks used). Held out: "
              f"{d['held_windows']['wiki']} + {d['held_windows']['c4']} windows of {args.seq} tokens from the last "
              f"{args.held_out:.0%} of each file's documents. Optimizer: AdamW lr {args.lr:g}, {args.lr_scheduler}, "
              f"{warmup(args, d['steps'])} warm-up steps, no weight decay, seed {args.seed}, "
              f"{'bf16 autocast (fp32 master weights; held-out evaluation in fp32)' if args.bf16 else 'fp32'}.", "",
              f"Students: budget {bench.budget:,} non-embedding parameters ({args.ratio:.0%} of the teacher's "
              f"{bench.teacher_params:,}). Widths of (1) ({'given by --widths' if args.widths else 'zero-shot search'}"
              f"): {bench.widths}; depth of (2): {bench.depth} (zero-shot calibration loss "
              f"{ {k: round(v, 3) for k, v in bench.setup['depth_zero_shot_loss'].items()} }). Importance: "
              f"{args.calib_samples} c4 training documents of at most {args.seq} tokens; setup "
              f"{bench.setup['importance_s']:.0f} s scoring, {bench.setup['width_search_s']:.0f} s width search.", "",
              "| # | variant | signal | architecture (hidden / ffn / heads / kv / layers) | non-emb. params | "
              "held-out ppl untrained | **held-out ppl** | wiki | c4 | train tokens | prep s | train s | CPU s | "
              "tokens/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    t_all, t_wiki, t_c4 = teacher_nll
    lines.append(f"| T | teacher SmolLM2-135M-Instruct | - | 576 / 1536 / 9 / 3 / 30 | {bench.teacher_params / 1e6:.1f}M"
                 f" | - | **{_ppl(t_all)}** | {_ppl(t_wiki)} | {_ppl(t_c4)} | - | - | - | - | - |")
    if "corrected_teacher_nll" in bench.setup:
        c_all, c_wiki, c_c4 = bench.setup["corrected_teacher_nll"]
        lines.append(f"| T' | teacher corrected ({bench.setup['correction_tokens']:,} tokens) | CE | same | same | - | "
                     f"**{_ppl(c_all)}** | {_ppl(c_wiki)} | {_ppl(c_c4)} | - | - | - | - | - |")
    for n, r in sorted(runs.items()):
        a = r.architecture
        s = r.seconds
        lines.append(
            f"| {n} | {r.name} | {r.signal} | {a['hidden_size']} / {a['intermediate_size']} / "
            f"{a['num_attention_heads']} / {a['num_key_value_heads']} / {a['num_hidden_layers']} | "
            f"{r.params / 1e6:.1f}M ({pct(r.params)}) | {_ppl(r.curve[0][1])} | **{_ppl(r.curve[-1][1])}** | "
            f"{_ppl(r.curve[-1][2])} | {_ppl(r.curve[-1][3])} | {r.train_tokens:,} | {s.get('prep', 0):.0f} | "
            f"{s['train']:.0f} | {s['cpu']:.0f} | {r.train_tokens / max(s['train'], 1e-9):.0f} |")
    lines += ["", "Held-out perplexity versus training tokens (all windows):", "",
              "| tokens | " + " | ".join(f"({n})" for n in sorted(runs)) + " |",
              "|---|" + "---|" * len(runs)]
    for i, (tokens, *_rest) in enumerate(next(iter(runs.values())).curve):
        lines.append(f"| {tokens:,} | " + " | ".join(_ppl(runs[n].curve[i][1]) if i < len(runs[n].curve) else "-"
                                                     for n in sorted(runs)) + " |")
    lines += ["", "Expected from the papers, checked at the end of the budget:", "", *(expectations(runs) or ["- (no "
              "pair of variants to compare ran)"]), "",
              "Columns: *signal* `kd` = online full-vocabulary forward KL at T=1, `topk (cache)` = offline sampled "
              f"top-{args.top_k} cache (exact head {args.top_k // 2}), `ce` = cross-entropy only (plain SFTTrainer), "
              f"`kd+hidden` = kd + cosine intermediate-state loss (map `{args.intermediate_map}`, balanced). *prep s*: "
              "work only that variant needed (the cache write, charged to the first variant using it; for (5) the "
              "correction, the rescoring and the pruning). *train s*: the Trainer's wall time less the held-out "
              "evaluations; *CPU s*: process CPU time of the same span; *tokens/s*: train tokens / train s."]
    if bench.cache_dir is not None:
        lines.append(f"The cache was written in {bench.cache_seconds:.0f} s.")
    return "\n".join(lines) + "\n"


def plot(runs: dict[int, Run], teacher_nll, bench: Bench, path: Path, tokens: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for n, r in sorted(runs.items()):
        xs = [c[0] for c in r.curve]
        ax.plot(xs, [math.exp(c[1]) for c in r.curve], marker="o", label=f"({n}) {r.name} [{r.signal}]")
    ax.axhline(math.exp(teacher_nll[0]), color="black", linestyle="--", label="teacher")
    if "corrected_teacher_nll" in bench.setup:
        ax.axhline(math.exp(bench.setup["corrected_teacher_nll"][0]), color="gray", linestyle=":",
                   label="corrected teacher")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens per student")
    ax.set_ylabel("held-out perplexity (wiki + c4 windows)")
    title = "SmolLM2-135M-Instruct students at ~50% of non-embedding params"
    if tokens < ISSUE_MIN_TOKENS:
        title += "\nPLUMBING CHECK (tiny budget), not a result"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(args, runs, teacher_nll, bench: Bench, machine: dict, wall: float) -> Path:
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(args, runs, teacher_nll, bench, machine, wall))
    plot(runs, teacher_nll, bench, out.with_suffix(".png"), bench.data.facts["tokens"])
    record = {"command": sys.argv, "args": {k: v for k, v in vars(args).items()}, "machine": machine,
              "data": bench.data.facts, "setup": bench.setup, "teacher_nll": teacher_nll,
              "cache_seconds": bench.cache_seconds, "wall_seconds": wall,
              "runs": {n: asdict(r) for n, r in runs.items()}}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
    return out


# --- main ----------------------------------------------------------------------------------------------------------
def shared_data_present() -> bool:
    """Whether ``wiki_train.txt`` and ``c4_calib.jsonl`` are in the workspace's shared/data folder (says which is
    absent on stderr when not)."""
    for path in (WIKI, C4):
        if not path.is_file():
            print(f"{path} is absent: this benchmark needs the workspace's shared/data folder; skipped",
                  file=sys.stderr)
            return False
    return True


def main(argv=None) -> int:
    args = parse(argv)
    if not shared_data_present():
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hf_minitron import load_causal_lm
    import hf_minitron.correction  # noqa: F401  every import up front: a broken one fails before hours of work
    import hf_minitron.distill.teacher_cache  # noqa: F401
    import matplotlib  # noqa: F401

    t0 = time.perf_counter()
    machine = machine_facts()
    teacher, tok = load_causal_lm("default", device="cuda" if torch.cuda.is_available() else None)
    teacher.eval()
    data = load_data(tok, args)
    print(f"data: {json.dumps(data.facts)}", flush=True)
    teacher_nll = held_out_nll(teacher, data)
    print(f"teacher held-out ppl {math.exp(teacher_nll[0]):.2f}", flush=True)
    runs: dict[int, Run] = {}
    with tempfile.TemporaryDirectory(prefix="minitron-table-") as tmp:
        bench = Bench(args, teacher, tok, data, Path(tmp))
        bench.prepare()
        for n in args.variant_list:
            runs[n] = bench.run(VARIANTS[n])
            r = runs[n]
            print(f"variant {n} done: held-out ppl {math.exp(r.curve[-1][1]):.2f}, train {r.seconds['train']:.0f}s, "
                  f"prep {r.seconds.get('prep', 0):.0f}s, eval {r.seconds['eval']:.0f}s", flush=True)
            out = write_outputs(args, runs, teacher_nll, bench, machine, time.perf_counter() - t0)  # after each one
    print(f"wrote {out}, {out.with_suffix('.png')}, {out.with_suffix('.json')}")
    print("\n".join(expectations(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
