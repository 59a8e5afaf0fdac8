"""Architecture search (hf_minitron/search.py): enumeration against a brute-force count, parameter counts against
pruned models, the chosen candidate against independently recomputed losses, Kendall's tau against hand values."""

import itertools
import math

import pytest
import torch

from hf_minitron.arch import count_parameters, get_adapter
from hf_minitron.importance import estimate_importance
from hf_minitron.pruning import plan_pruning, prune_model
from hf_minitron.search import (AXES, Architecture, ParameterCount, choose_widths, enumerate_architectures,
                                kendall_tau, ranks, search_architectures)
from hf_minitron.testing import TINY_VOCAB, tiny_model


def _scores(model, seed=0, n=6, seq=24):
    calib = torch.randint(3, TINY_VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))
    return estimate_importance(model, calib, batch_size=3, depth_criteria=("block_influence",))


def _blocks(seed=1, n=4, seq=24):
    return torch.randint(3, TINY_VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


# --- parameter counts ------------------------------------------------------------------------------------------------
def test_parameter_count_equals_the_pruned_models(family):
    """The analytic count of every candidate (all four axes) equals count_parameters of the model prune_model builds."""
    model = tiny_model(family)
    scores = _scores(model)
    budget = count_parameters(model)[1] // 2
    candidates = enumerate_architectures(model, budget, tolerance=0.25, width_multiple=16, axes=AXES)
    assert len(candidates) >= 10
    for cand in candidates[:: max(1, len(candidates) // 12)]:
        pruned = prune_model(model, cand.architecture.targets(), scores)
        assert count_parameters(pruned)[1] == cand.params, cand
        assert Architecture.of(pruned) == cand.architecture
        assert get_adapter(pruned).sizes().head_dim == get_adapter(model).sizes().head_dim


def test_parameter_count_of_the_model_itself(family):
    model = tiny_model(family)
    assert ParameterCount(model)(Architecture.of(model)) == count_parameters(model)[1]


# --- enumeration -----------------------------------------------------------------------------------------------------
def _llama_params(h, f, q, kv, n, d=16):
    """Hand-written non-embedding count of a tied Llama (no biases): q and o are h x q*d, k and v h x kv*d, three
    h x f MLP matrices, two hidden norms per layer and the final norm."""
    return n * (2 * h * q * d + 2 * h * kv * d + 3 * h * f + 2 * h) + h


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_enumeration_is_complete_against_brute_force(family):
    """Every (hidden, ffn, heads, kv heads, layers) in the box is tried by brute force with the rules written out;
    the enumeration returns exactly that set. Llama's config needs hidden % heads == 0, Mistral's does not: the
    model (hidden 96, 6 heads / 2 KV heads) makes the difference show."""
    model = tiny_model(family, hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                       tie_word_embeddings=True)
    assert count_parameters(model)[1] == _llama_params(96, 128, 6, 2, 4)
    budget, tol, m = _llama_params(96, 128, 6, 2, 4) // 2, 0.05, 16
    expected = set()
    for h, f, q, kv, n in itertools.product(range(1, 97), range(1, 129), range(1, 7), range(1, 3), range(1, 5)):
        if h % m or f % m or q % kv or 2 % kv or q // kv > 3:
            continue
        if family == "llama" and h % q:
            continue
        if abs(_llama_params(h, f, q, kv, n) - budget) <= tol * budget:
            expected.add((h, f, q, kv, n))
    got = enumerate_architectures(model, budget, tolerance=tol, width_multiple=m, axes=AXES)
    got_set = {tuple(c.architecture.targets().values()) for c in got}
    assert len(got) == len(got_set) == len(expected) > 10
    assert got_set == expected
    if family == "mistral":  # the Llama constraint removes some, so the two families differ
        assert any(h % q for h, _, q, _, _ in expected)


def test_every_candidate_meets_budget_and_constraints():
    model = tiny_model("llama", hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16)
    scores = _scores(model)
    src = get_adapter(model).sizes()
    budget = int(0.6 * count_parameters(model)[1])
    candidates = enumerate_architectures(model, budget, tolerance=0.05, width_multiple=32, axes=AXES)
    assert candidates
    for c in candidates:
        a = c.architecture
        assert abs(c.params - budget) <= 0.05 * budget
        assert a.num_attention_heads % a.num_key_value_heads == 0
        assert src.num_key_value_heads % a.num_key_value_heads == 0
        assert a.num_attention_heads // a.num_key_value_heads <= src.num_attention_heads // src.num_key_value_heads
        assert a.hidden_size % a.num_attention_heads == 0  # LlamaConfig's rule
        assert a.hidden_size % 32 == 0 and a.intermediate_size % 32 == 0
        plan_pruning(model, a.targets(), scores)  # the pruner accepts it


def test_widths_only_keeps_depth_and_the_untouched_axes():
    model = tiny_model("llama")
    budget = count_parameters(model)[1] // 2
    cands = enumerate_architectures(model, budget, tolerance=0.1, width_multiple=16, axes=["intermediate_size"])
    # only the ffn moves: per layer 3*64*f, everything else fixed -> one f fits (ffn 32: 0.48 of the params)
    assert [c.architecture for c in cands] == [Architecture(64, 32, 4, 2, 4)]
    assert all(c.architecture.num_hidden_layers == 4 for c in enumerate_architectures(model, budget, tolerance=0.1,
                                                                                       width_multiple=16))


# --- ranking ---------------------------------------------------------------------------------------------------------
def test_kendall_tau_hand_values():
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [2, 1, 3, 4]) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair
    assert kendall_tau([1, 2, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))  # tau-b with a tie in x
    assert kendall_tau([1], [1]) is None
    scipy_stats = pytest.importorskip("scipy.stats")
    x, y = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]
    assert kendall_tau(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic)


def test_ranks_lowest_first_ties_in_order():
    assert ranks([0.3, 0.1, 0.2, 0.1]) == [4, 1, 3, 2]


def _nll(model, blocks):
    """Mean next-token NLL in float64, written out here (not hf_minitron.evaluation)."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=blocks).logits.double(), dim=-1)
    picked = logp[:, :-1].gather(-1, blocks[:, 1:, None]).squeeze(-1)
    return float(-picked.mean())


def test_chosen_is_the_lowest_loss_after_pruning():
    model = tiny_model("llama")
    scores, blocks = _scores(model), _blocks()
    budget = count_parameters(model)[1] // 2
    outcome = search_architectures(model, scores, blocks, budget=budget, tolerance=0.1, width_multiple=16)
    assert len(outcome.candidates) == outcome.enumerated >= 5
    recomputed = [_nll(prune_model(model, c.architecture.targets(), scores), blocks) for c in outcome.candidates]
    for cand, loss in zip(outcome.candidates, recomputed):
        assert cand.zero_shot_loss == pytest.approx(loss, abs=1e-5)
    best = min(range(len(recomputed)), key=recomputed.__getitem__)
    assert outcome.chosen is outcome.candidates[best] and outcome.chosen.zero_shot_rank == 1
    assert sorted(c.zero_shot_rank for c in outcome.candidates) == list(range(1, len(recomputed) + 1))
    assert outcome.kendall_tau is None and all(c.distill_rank is None for c in outcome.candidates)


def test_max_candidates_keeps_those_closest_to_the_budget():
    model = tiny_model("llama")
    budget = count_parameters(model)[1] // 2
    every = enumerate_architectures(model, budget, tolerance=0.1, width_multiple=16)
    outcome = search_architectures(model, _scores(model), _blocks(), budget=budget, tolerance=0.1, width_multiple=16,
                                   max_candidates=3)
    assert outcome.enumerated == len(every) > 3 and len(outcome.candidates) == 3
    gaps = sorted(abs(c.params - budget) for c in every)
    assert sorted(abs(c.params - budget) for c in outcome.candidates) == gaps[:3]


def _distill_args(tmp_path, steps=3):
    from hf_minitron.distill import DistillationConfig

    return DistillationConfig(output_dir=str(tmp_path / "runs"), use_cpu=True, bf16=False, max_steps=steps,
                              per_device_train_batch_size=2, learning_rate=1e-2, report_to=[], save_strategy="no",
                              max_length=24, seed=7, disable_tqdm=True, logging_steps=1)


def test_distillation_rerank_is_reproducible_and_chooses_the_best(tmp_path, tokenizer):
    """The top 3 are distilled; each post-distillation loss is reproduced by an independent DistillationTrainer run
    from the same seed and data; the chosen one has the lowest of them; tau follows from the two rankings."""
    import datasets

    from hf_minitron.distill import DistillationTrainer

    model = tiny_model("llama")
    scores, blocks, train = _scores(model), _blocks(), _blocks(seed=2, n=6)
    args = _distill_args(tmp_path)
    outcome = search_architectures(model, scores, blocks, budget=count_parameters(model)[1] // 2, tolerance=0.1,
                                   width_multiple=16, top_n=3, train_blocks=train, distill_args=args,
                                   tokenizer=tokenizer)
    assert all(p.requires_grad for p in model.parameters())  # the teacher is handed back as it came
    top = sorted([c for c in outcome.candidates if c.distill_rank is not None], key=lambda c: c.zero_shot_rank)
    assert [c.zero_shot_rank for c in top] == [1, 2, 3]
    for cand in top:
        torch.manual_seed(args.seed)
        student = prune_model(model, cand.architecture.targets(), scores).train()
        trainer = DistillationTrainer(student, args=args, processing_class=tokenizer, teacher_model=model,
                                      teacher_processing_class=tokenizer,
                                      train_dataset=datasets.Dataset.from_dict({"input_ids": train.tolist()}))
        trainer.train()
        assert cand.distill_loss == pytest.approx(_nll(student.eval(), blocks), abs=1e-5)
        assert cand.distill_loss != pytest.approx(cand.zero_shot_loss, abs=1e-4)  # training changed the model
    assert outcome.chosen is min(top, key=lambda c: c.distill_loss)
    assert outcome.kendall_tau == pytest.approx(kendall_tau([c.zero_shot_loss for c in top],
                                                            [c.distill_loss for c in top]))


def test_choose_widths_gives_prune_targets_near_half():
    model = tiny_model("llama")
    scores = _scores(model)
    targets = choose_widths(model, scores, _blocks(), target_ratio=0.5, tolerance=0.1, width_multiple=16)
    assert set(targets) == {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"}
    pruned = prune_model(model, targets, scores)
    assert abs(count_parameters(pruned)[1] / count_parameters(model)[1] - 0.5) <= 0.1 * 0.5
    assert get_adapter(pruned).num_layers == 4


def test_no_candidate_in_budget_is_an_error_naming_the_fix():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="no architecture within 5%.*widen the tolerance"):
        search_architectures(model, _scores(model), _blocks(), budget=10, tolerance=0.05, width_multiple=16)
