"""Recipe files, backbone profiles, overrides and validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from medbench.errors import MedbenchError
from medbench.train.config import (
    TRAINING_DEFAULTS,
    RecipeConfig,
    RecipeError,
    list_backbones,
    list_recipes,
    load_backbone_profile,
    load_recipe,
    recipe_index,
    recipe_paths,
)
from medbench.train.objectives import OBJECTIVES
from medbench.train.run import build_training_args

REPO = Path(__file__).resolve().parents[2]


def training_args(recipe, tmp_path):
    """The run's resolved trl.DPOConfig (where settings DPOConfig owns are typed and checked)."""
    return build_training_args(recipe, tmp_path / "out")

STUDY_VARIANTS = {
    "dpo",
    "dpo_nll",
    "ipo",
    "robust_dpo",
    "simpo",
    "orpo",
    "copo",
    "mdpo",
    "mmedpo",
    "error_targeted",
    "error_targeted_dpo_only",
    "error_targeted_copo_only",
}


def test_every_study_variant_has_a_recipe_and_every_recipe_loads():
    recipes = {recipe.name: recipe for recipe in list_recipes()}
    assert STUDY_VARIANTS <= set(recipes)
    for recipe in recipes.values():
        assert recipe.objective in OBJECTIVES
        assert recipe.description and "\n" not in recipe.description


def test_recipes_keep_the_study_defaults(tmp_path):
    for recipe in list_recipes():
        if recipe.online:  # GRPO trains on TRL's GRPO defaults (tests/trainers/test_grpo.py)
            continue
        args = training_args(recipe, tmp_path)
        assert args.beta == 0.1
        assert args.learning_rate == 1e-7
        assert args.lr_scheduler_type == "cosine"
        assert args.warmup_steps == 0.03  # a fraction of the steps
        assert args.num_train_epochs == 3
        assert args.per_device_train_batch_size == 4 and args.seed == 42 and args.max_length == 1024
        assert args.gradient_checkpointing and args.report_to == []
        assert recipe.freeze_projector and recipe.freeze_vision_tower
        assert not set(recipe.dpo_args) & set(TRAINING_DEFAULTS) - {"label_smoothing"}  # no recipe restates them
    assert load_recipe("dpo_nll").nll_weight == 1.0


def test_list_reads_the_recipe_files_without_typing_them():
    assert recipe_index() == [
        {"name": recipe.name, "objective": recipe.objective, "description": recipe.description}
        for recipe in list_recipes()
    ]


def test_ablations_use_the_text_and_image_side_terms():
    assert load_recipe("error_targeted_dpo_only").objective == "dpo"
    assert load_recipe("error_targeted_copo_only").objective == "copo"
    assert load_recipe("error_targeted").visual_error_types == ["visual_misinterpretation"]


def test_recipe_by_path_and_by_name(tmp_path):
    by_name = load_recipe("mdpo")
    by_path = load_recipe(recipe_paths()[0].parent / "mdpo.yaml")
    documented = load_recipe("trainers/recipes/mdpo.yaml")
    assert by_name == by_path == documented
    custom = tmp_path / "mine.yaml"
    custom.write_text("objective: ipo\nbeta: 0.5\n")
    recipe = load_recipe(custom)
    assert (recipe.name, recipe.objective, recipe.dpo_args) == ("mine", "ipo", {"beta": 0.5})


def test_overrides_are_typed_from_strings(tmp_path):
    overrides = {
        "beta": "0.25",
        "learning_rate": "1e-5",  # YAML 1.1 would keep this a string
        "use_lora": True,
        "lora_r": "8",
        "max_steps": "10",
        "save_strategy": "no",  # YAML would read a boolean
        "max_length": "null",
        "lora_target_modules": "q_proj,v_proj",
        "term_weights": "1,0.5",
        "objective": "mdpo",
        "terms": "dpo,copo",
        "save_steps": "50",  # any DPOConfig argument
    }
    recipe = load_recipe("dpo", overrides)
    assert recipe.use_lora is True and recipe.lora_r == 8 and recipe.lora_target_modules == ["q_proj", "v_proj"]
    assert recipe.terms == ["dpo", "copo"] and recipe.term_weights == [1.0, 0.5]
    args = training_args(recipe, tmp_path)
    assert args.beta == 0.25 and args.learning_rate == 1e-5 and args.max_steps == 10
    assert args.save_strategy == "no" and args.max_length is None and args.save_steps == 50


def test_yaml_values_and_command_line_text_are_typed_alike(tmp_path):
    path = tmp_path / "typed.yaml"
    path.write_text("objective: dpo\nlearning_rate: 1e-6\nlora_r: 8\nuse_lora: yes\nterm_weights: [1]\n"
                    "report_to: [tensorboard]\n")
    from_file = load_recipe(path)
    from_cli = load_recipe("dpo", {"learning_rate": "1e-6", "lora_r": "8", "use_lora": "yes", "term_weights": "1",
                                   "report_to": "tensorboard"})
    assert (from_file.lora_r, from_file.use_lora, from_file.term_weights) == (8, True, [1.0])
    assert (from_cli.lora_r, from_cli.use_lora, from_cli.term_weights) == (8, True, [1.0])
    for recipe in (from_file, from_cli):
        args = training_args(recipe, tmp_path)
        assert args.learning_rate == 1e-6 and args.report_to == ["tensorboard"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # medbench's own fields, checked when the recipe loads
        ({"lora_r": "abc"}, "recipe 'dpo': `lora_r` must be an int, got 'abc'"),
        ({"use_lora": "maybe"}, "recipe 'dpo': `use_lora` must be true or false, got 'maybe'"),
        ({"objective": "kto"}, "`objective` is 'kto'; choose one of"),
        ({"precision": "fp16"}, "`precision` is 'fp16'"),
        ({"lora_target_modules": ""}, "`lora_target_modules` expected at least one argument"),
        ({"output_dir": "x"}, "recipe 'dpo': `output_dir` is managed by medbench train: pass --output_dir"),
        ({"loss_type": "hinge"}, "set `objective: trl` and `trl_loss_type`"),
        ({"precompute_ref_log_probs": "true"}, "cannot precompute reference log-probs for image data"),
        ({"warmup_ratio": "0.1"}, "`warmup_ratio` is not a setting: transformers 5 removed it; set `warmup_steps`"),
        ({"gradient_checkpointing": "false"}, "set `activation_checkpointing`"),
        ({"objective": "trl", "trl_loss_type": "sigmoid,bogus"}, "unknown loss types ['bogus']"),
        ({"backbone": "gpt4v"}, "unknown backbone profile 'gpt4v'"),
    ],
)
def test_bad_settings_fail_with_one_line(overrides, message):
    with pytest.raises(RecipeError) as info:
        load_recipe("dpo", overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, MedbenchError)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # trl.DPOConfig arguments, checked when the run's DPOConfig is built (before data or model load)
        ({"learning_rate": "abc"}, "recipe 'dpo': `learning_rate` must be a float, got 'abc'"),
        ({"beta": "0"}, "recipe 'dpo': `beta` must be > 0"),
        ({"label_smoothing": "0.5"}, "`label_smoothing` must lie in [0, 0.5)"),
        ({"save_strategy": "sometimes"}, "`save_strategy` is 'sometimes'; choose from 'no', 'steps', 'epoch'"),
        ({"max_length": "4"}, "`max_length` must be >= 8"),
        ({"warmup_steps": "-1"}, "trl.DPOConfig rejected the settings: Got warmup_steps = -1.0"),
        ({"no_such_option": "1"}, "unknown setting `no_such_option` (not a recipe field nor a trl.DPOConfig"),
        ({"save_stratgy": "no"}, "trl.DPOConfig argument); did you mean `save_strategy`?"),
        ({"use_lorra": "true"}, "did you mean `use_lora`?"),
    ],
)
def test_bad_training_arguments_fail_with_one_line(tmp_path, overrides, message):
    recipe = load_recipe("dpo", overrides)
    with pytest.raises(RecipeError) as info:
        training_args(recipe, tmp_path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_robust_recipes_need_label_smoothing(tmp_path):
    assert training_args(load_recipe("robust_dpo"), tmp_path).label_smoothing == 0.1
    with pytest.raises(RecipeError, match="label_smoothing` must be > 0 for term robust_dpo of objective robust_dpo"):
        training_args(load_recipe("robust_dpo", {"label_smoothing": "0"}), tmp_path)


def test_any_dpo_config_argument_is_a_top_level_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "objective: dpo\nsave_steps: 10\nlr_scheduler_type: linear\nmodel_init_kwargs: {attn_implementation: eager}\n"
    )
    recipe = load_recipe(path)
    assert recipe.dpo_args == {"save_steps": 10, "lr_scheduler_type": "linear",
                               "model_init_kwargs": {"attn_implementation": "eager"}}
    args = training_args(recipe, tmp_path)
    assert args.save_steps == 10 and args.lr_scheduler_type == "linear"
    assert args.model_init_kwargs == {"attn_implementation": "eager"}


def test_bad_recipe_files(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("objective: dpo\ntrainer_args: {save_steps: 10}\n")
    with pytest.raises(RecipeError, match="`trainer_args` is not a setting: state trl.DPOConfig arguments at the top"):
        load_recipe(path)
    path.write_text("objective: dpo\nlora_r: [1, 2]\n")
    with pytest.raises(RecipeError, match="recipe 'bad': `lora_r` must be an int, got '\\[1, 2\\]'"):
        load_recipe(path)
    path.write_text("objective: [dpo\n")
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(path)


def test_missing_recipe_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match=r"recipe file not found: nope.yaml \(shipped recipes: .*mdpo"):
        load_recipe("nope.yaml")


def test_backbone_profiles_apply_between_recipe_and_overrides(tmp_path):
    names = {profile.name for profile in list_backbones()}
    assert names == {"llava_med_v1_5", "huatuogpt_vision_7b", "huatuogpt_vision_qwen2_5vl"}
    llava = load_recipe("dpo", {"backbone": "llava_med_v1_5"})
    assert training_args(llava, tmp_path).max_length == 1024 and "[INST]" in llava.chat_template
    huatuo = load_recipe("mdpo", {"backbone": "huatuogpt_vision_qwen2_5vl"})
    assert training_args(huatuo, tmp_path).max_length == 2048 and huatuo.chat_template is None
    shorter = load_recipe("dpo", {"backbone": "llava_med_v1_5", "max_length": "512"})
    assert training_args(shorter, tmp_path).max_length == 512
    assert load_backbone_profile("llava_med_v1_5").model_type == "llava"
    assert load_backbone_profile("huatuogpt_vision_qwen2_5vl").model_type == "qwen2_5_vl"


def test_config_fields_document_themselves():
    for f in dataclasses.fields(RecipeConfig):
        assert f.metadata.get("help"), f"field {f.name} lacks help text"


def test_direct_construction_validates():
    with pytest.raises(RecipeError, match="`lora_r` must be >= 1"):
        RecipeConfig(lora_r=0)
    assert RecipeConfig(objective="copo").objective == "copo"


def test_a_backbone_profile_never_overrides_what_the_recipe_states(tmp_path):
    recipe_file = tmp_path / "short.yaml"
    recipe_file.write_text("objective: dpo\nmax_length: 384\n")
    short = load_recipe(str(recipe_file), {"backbone": "huatuogpt_vision_qwen2_5vl"})
    assert training_args(short, tmp_path).max_length == 384
    # What the recipe leaves unset, the profile fills in; the command line wins over both.
    assert training_args(load_recipe("dpo", {"backbone": "huatuogpt_vision_qwen2_5vl"}), tmp_path).max_length == 2048
    both = load_recipe(str(recipe_file), {"backbone": "huatuogpt_vision_qwen2_5vl", "max_length": "640"})
    assert training_args(both, tmp_path).max_length == 640


def test_precedence_defaults_profile_recipe_command_line(tmp_path):
    """Field defaults < the study's training defaults < backbone profile < recipe file < command line, for
    medbench's own fields (chat_template, use_lora) and trl.DPOConfig arguments (max_length, learning_rate) alike."""
    recipe_file = tmp_path / "layered.yaml"
    recipe_file.write_text("objective: dpo\nbackbone: llava_med_v1_5\nchat_template: '{{ recipe }}'\n"
                           "max_length: 384\nlearning_rate: 1e-6\nuse_lora: true\n")
    defaults = training_args(load_recipe("dpo"), tmp_path)
    assert (defaults.learning_rate, defaults.max_length, defaults.save_strategy) == (1e-7, 1024, "epoch")
    assert load_recipe("dpo").chat_template is None and load_recipe("dpo").use_lora is False

    profile_only = load_recipe("dpo", {"backbone": "huatuogpt_vision_7b"})
    assert "<|user|>" in profile_only.chat_template  # the profile over the field default
    assert training_args(profile_only, tmp_path).max_length == 2048  # ... and over the study default

    stated = load_recipe(recipe_file)  # the recipe names llava_med_v1_5 (max_length 1024) itself
    args = training_args(stated, tmp_path)
    assert stated.chat_template == "{{ recipe }}" and stated.use_lora is True
    assert (args.max_length, args.learning_rate, args.save_strategy) == (384, 1e-6, "epoch")

    overridden = load_recipe(recipe_file, {"backbone": "huatuogpt_vision_7b", "chat_template": "{{ cli }}",
                                           "max_length": "640", "use_lora": "false"})
    args = training_args(overridden, tmp_path)
    assert overridden.backbone == "huatuogpt_vision_7b"
    assert overridden.chat_template == "{{ cli }}" and overridden.use_lora is False
    assert (args.max_length, args.learning_rate) == (640, 1e-6)


def test_the_paper_study_states_only_valid_settings(tmp_path):
    import yaml

    study = yaml.safe_load((REPO / "medbench" / "studies" / "paper.yaml").read_text())
    from medbench.study.spec import _flags

    for name in [*study["recipes"], "sft"]:
        # `medbench study` passes each setting as `--key value` text.
        settings = {**study["train"], **(study.get("recipe_train") or {}).get(name, {})}
        argv = _flags(settings, "paper.yaml")
        recipe = load_recipe(name, {key[2:]: value for key, value in zip(argv[::2], argv[1::2], strict=True)})
        args = training_args(recipe, tmp_path)
        # GRPO (online RL, not in the paper) takes TRL's GRPO learning rate; every paper variant the study's 1e-7.
        assert args.learning_rate == (1e-6 if name == "grpo" else 1e-7)
        assert args.warmup_steps == 0.03 and args.per_device_train_batch_size == 2
