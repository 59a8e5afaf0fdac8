"""The correct-teacher, steerlm and dpo stages: registration, config defaults (learning-rate table, CPU-friendly TRL
settings, the Trainer's own config), the deprecated names, the one PEFT unwrap, and a table of bad inputs that each
stop with exit code 2, one line naming the field, before any model loads and without creating the output."""

import copy
import json

import pytest

from hf_minitron.alignment.training import LoraSettings, TrainSettings, get_base_model, resolve_config
from hf_minitron.cli import main
from hf_minitron.errors import ConfigError, DataError
from hf_minitron.stages.correction import CorrectTeacherConfig
from hf_minitron.stages.dpo import DPOStageConfig
from hf_minitron.stages.steerlm import SteerLMConfig
from hf_minitron.testing import tiny_model

HELPSTEER = {"helpfulness": 4, "correctness": 3, "coherence": 4, "complexity": 1, "verbosity": 0}


def test_stages_are_registered_with_their_inputs_and_products():
    from hf_minitron.stages import get_stage

    correction, steerlm, dpo = get_stage("correct-teacher"), get_stage("steerlm"), get_stage("dpo")
    assert (correction.config_cls, correction.inputs, correction.produces) == (
        CorrectTeacherConfig, {"model": "teacher", "data": "data"}, "teacher")
    assert (steerlm.config_cls, steerlm.inputs, steerlm.produces) == (SteerLMConfig, {"model": "student"}, "student")
    assert (dpo.config_cls, dpo.inputs, dpo.produces) == (DPOStageConfig, {"model": "student"}, "student")
    assert correction.order < get_stage("prune").order < dpo.order  # correction runs before pruning


@pytest.mark.parametrize("cls,full,lora,default_lora", [
    (CorrectTeacherConfig, 2e-5, 1e-4, True), (SteerLMConfig, 2e-5, 1e-4, False), (DPOStageConfig, 5e-7, 5e-5, False),
])
def test_learning_rate_table_and_cpu_defaults(cls, full, lora, default_lora, tmp_path):
    import torch
    import trl

    assert cls().use_lora is default_lora
    assert cls(use_lora=False).learning_rate == full and cls(use_lora=True).learning_rate == lora
    assert cls(use_lora=True, learning_rate=3e-3).learning_rate == 3e-3
    config = cls(output_dir=str(tmp_path / "out"))
    if not torch.cuda.is_available():
        assert config.use_cpu is True and config.bf16 is False
    assert (config.activation_checkpointing, config.save_strategy.value, config.report_to) == (False, "no", [])
    assert config.checkpoint_path() == str(tmp_path / "out") + ".checkpoints"
    args = config.trainer_args()
    assert type(args) is (trl.DPOConfig if cls is DPOStageConfig else trl.SFTConfig)
    assert args.output_dir == config.checkpoint_path() and args.learning_rate == config.learning_rate
    assert not hasattr(args, "held_out_fraction")


def test_dpo_reference_maps_to_trl_and_steerlm_trains_only_responses():
    assert DPOStageConfig(reference="precomputed").trainer_args(precompute_ref_log_probs=True).precompute_ref_log_probs
    with pytest.raises(ConfigError, match="reference='precomputed'"):
        DPOStageConfig(precompute_ref_log_probs=True)
    assert SteerLMConfig().completion_only_loss is True


def test_deprecated_names_still_work():
    import hf_minitron
    import hf_minitron.alignment as alignment
    from hf_minitron.correction import correct_teacher

    with pytest.deprecated_call():
        assert alignment.correct_teacher is correct_teacher
    assert hf_minitron.correct_teacher is correct_teacher
    assert hf_minitron.TrainSettings is TrainSettings and hf_minitron.LoraSettings is LoraSettings
    with pytest.deprecated_call():
        settings = TrainSettings(max_steps=3, learning_rate=1e-3, gradient_checkpointing=True, output_dir="/tmp/ck",
                                 trl_overrides={"warmup_steps": 2})
    with pytest.deprecated_call():
        lora = LoraSettings(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
    config = resolve_config(DPOStageConfig, settings=settings, lora=lora, beta=0.3)
    assert (config.max_steps, config.learning_rate, config.activation_checkpointing, config.seed) == (3, 1e-3, True, 0)
    assert (config.use_lora, config.lora_r, config.lora_alpha, config.beta) == (True, 8, 16, 0.3)
    assert config.lora_target_modules == ["q_proj", "v_proj"] and config.warmup_steps == 2
    assert config.checkpoint_path() == "/tmp/ck"
    assert config.peft_config().target_modules == {"q_proj", "v_proj"}


def test_get_base_model_unwraps_peft_only():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama")
    assert get_base_model(model) is model
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert get_base_model(wrapped) is model


def test_alignment_loaders_read_every_format_through_the_one_reader(tmp_path):
    """A CSV of preference pairs (a format the old alignment reader did not know) loads; errors are DataErrors."""
    from hf_minitron.alignment import AlignmentDataError, load_preference_data

    csv = tmp_path / "pairs.csv"
    csv.write_text("prompt,chosen,rejected\nsay hi,hi,no\nsay yes,yes,no\n")
    assert load_preference_data(csv)[1] == {"prompt": "say yes", "chosen": "yes", "rejected": "no"}
    assert issubclass(AlignmentDataError, DataError)
    with pytest.raises(DataError, match="does not exist"):
        load_preference_data(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------------------------
# Bad input through the CLI: exit code 2, one line naming the field/row, no model loaded, nothing written


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    from hf_minitron.loading import save_model

    root = tmp_path_factory.mktemp("align-bad")
    save_model(tiny_model("llama"), tokenizer, root / "model")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    save_model(tiny_model("llama"), plain, root / "no-template")
    (root / "no-config").mkdir()
    (root / "no-config" / "weights.bin").write_bytes(b"x")
    pairs = [{"prompt": f"Q{i}: say hi", "chosen": "hi", "rejected": "no"} for i in range(6)]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs))
    (root / "pairs-missing.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a"}))
    (root / "pairs-long.jsonl").write_text(json.dumps({"prompt": "x" * 80, "chosen": "a", "rejected": "b"}))
    rows = [{"prompt": f"Name colour {i}.", "response": "Blue.", **HELPSTEER} for i in range(6)]
    (root / "steer.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    bad = [*rows[:1], {**rows[1], "verbosity": 7}]
    (root / "steer-bad.jsonl").write_text("\n".join(json.dumps(r) for r in bad))
    (root / "corpus.txt").write_text("\n".join(f"the cat sat on mat number {i}" for i in range(10)))
    (root / "one.txt").write_text("a single document\n")
    chat = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}]
    (root / "chat-bad.jsonl").write_text("\n".join(json.dumps(r) for r in chat))
    (root / "busy").mkdir()
    (root / "busy" / "keep.txt").write_text("x")
    return root


# (stage, arguments; {root} is the workspace; --model/--output_dir are added unless given), text the error must hold
BAD_INPUTS = [
    ("dpo", "--data {root}/pairs.jsonl --learning_rate -1", "learning_rate=-1"),
    ("dpo", "--data {root}/pairs.jsonl --learning_rate 0", "learning_rate=0"),
    ("steerlm", "--data {root}/steer.jsonl --learning_rate nan", "learning_rate=nan"),
    ("dpo", "--data {root}/pairs.jsonl --beta 0", "beta=0"),
    ("dpo", "--data {root}/pairs.jsonl --beta -0.5", "beta=-0.5"),
    ("dpo", "--data {root}/pairs.jsonl --held_out_fraction 1", "held_out_fraction=1"),
    ("steerlm", "--data {root}/steer.jsonl --held_out_fraction -0.1", "held_out_fraction=-0.1"),
    ("correct-teacher", "--data {root}/corpus.txt --lora_r 0", "lora_r=0"),
    ("dpo", "--data {root}/pairs.jsonl --use_lora --lora_alpha 0", "lora_alpha=0"),
    ("steerlm", "--data {root}/steer.jsonl --lora_dropout 1", "lora_dropout=1"),
    ("dpo", "--data {root}/pairs.jsonl --limit 0", "limit=0"),
    ("correct-teacher", "--data {root}/corpus.txt --max_length 1", "max_length=1"),
    ("dpo", "--data {root}/pairs.jsonl --per_device_train_batch_size 0", "per_device_train_batch_size=0"),
    ("steerlm", "--data {root}/steer.jsonl --max_steps -1 --num_train_epochs 0", "nothing would be trained"),
    ("steerlm", "--data {root}/steer.jsonl --max_length 16", "max_length=16"),
    ("steerlm", "--data {root}/steer.jsonl --attributes oasst --annotate_verbosity", "annotate_verbosity"),
    ("steerlm", "--data {root}/steer.jsonl --attributes a,b,a", "attributes="),
    ("steerlm", "--data {root}/steer-bad.jsonl", "row 1: attribute 'verbosity'=7"),
    ("steerlm", "--data {root}/steer.jsonl --model {root}/no-template", "no chat template"),
    ("dpo", "--data {root}/pairs-missing.jsonl", "row 0: missing field(s) ['rejected']"),
    ("dpo", "--data {root}/pairs-long.jsonl --max_length 32", "every pair's prompt fills max_length=32"),
    ("dpo", "--data {root}/missing.jsonl", "missing.jsonl"),
    ("dpo", "", "data is not set"),
    ("dpo", "--data {root}/pairs.jsonl --output_dir {root}/busy", "not empty"),
    ("dpo", "--data {root}/pairs.jsonl --output_dir {root}/busy/keep.txt/out", "is a file"),
    ("steerlm", "--data {root}/steer.jsonl --checkpoint_dir {root}/busy/keep.txt", "checkpoint_dir"),
    ("dpo", "--data {root}/pairs.jsonl --model {root}/no-config", "no config.json"),
    ("correct-teacher", "--data {root}/corpus.txt --assistant_only_loss", "assistant_only_loss"),
    ("correct-teacher", "--data {root}/corpus.txt --held_out_fraction 0.1 --max_length 256", "held_out_fraction=0.1"),
    ("correct-teacher", "--data {root}/one.txt --held_out_fraction 0.5", "held_out_fraction=0.5 holds out all"),
    ("correct-teacher", "--data {root}/chat-bad.jsonl", "row 1: field 'messages[1].content' is empty"),
    ("correct-teacher", "--data {root}/pairs.jsonl --dataset_text_field body", "'body'"),
]


@pytest.mark.parametrize("stage,args,expected", BAD_INPUTS, ids=[f"{s}:{e}" for s, _, e in BAD_INPUTS])
def test_bad_input_stops_before_any_model_loads(workspace, monkeypatch, capsys, stage, args, expected):
    import hf_minitron.loading

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(hf_minitron.loading, "load_causal_lm", no_model)
    argv = [stage, *args.format(root=workspace).split()]
    out = workspace / f"out-{stage}"
    if "--model" not in argv:
        argv += ["--model", str(workspace / "model")]
    if "--output_dir" not in argv:
        argv += ["--output_dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hf-minitron {stage}: error: ") and expected in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not out.exists() and not (workspace / f"out-{stage}.checkpoints").exists()
    assert sorted(p.name for p in (workspace / "busy").iterdir()) == ["keep.txt"]


def test_help_lists_the_stage_fields_and_closed_choices(capsys, tmp_path):
    assert main(["dpo", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--held_out_fraction", "--reference", "--beta", "--use_lora", "--checkpoint_dir", "--max_steps"):
        assert flag in text
    assert "Reference policy: model" in text
    assert main(["dpo", "--data", "d.jsonl", "--output_dir", str(tmp_path / "o"), "--reference", "ref"]) == 2
    assert "argument --reference: invalid choice: 'ref'" in capsys.readouterr().err
