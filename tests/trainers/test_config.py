"""Recipe files, backbone profiles, overrides and validation."""

from __future__ import annotations

import dataclasses

import pytest

from medbench.errors import MedbenchError
from medbench.train.config import (
    RecipeConfig,
    RecipeError,
    list_backbones,
    list_recipes,
    load_backbone_profile,
    load_recipe,
    recipe_paths,
)
from medbench.train.objectives import OBJECTIVES

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


def test_recipes_keep_the_study_defaults():
    for recipe in list_recipes():
        assert recipe.beta == 0.1
        assert recipe.learning_rate == 1e-7
        assert recipe.lr_scheduler_type == "cosine"
        assert recipe.warmup_ratio == 0.03
        assert recipe.num_train_epochs == 3
        assert recipe.freeze_projector and recipe.freeze_vision_tower
    assert load_recipe("dpo_nll").nll_weight == 1.0


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
    assert (recipe.name, recipe.objective, recipe.beta) == ("mine", "ipo", 0.5)


def test_overrides_are_typed_from_strings():
    recipe = load_recipe(
        "dpo",
        {
            "beta": "0.25",
            "learning_rate": "1e-5",  # YAML 1.1 would keep this a string
            "use_lora": True,
            "max_steps": "10",
            "save_strategy": "no",  # YAML would read a boolean
            "max_length": "null",
            "lora_target_modules": "q_proj,v_proj",
            "report_to": "[tensorboard]",
            "save_steps": "50",  # not a recipe field: a DPOConfig argument
        },
    )
    assert recipe.beta == 0.25 and recipe.learning_rate == 1e-5 and recipe.use_lora is True
    assert recipe.max_steps == 10 and recipe.save_strategy == "no" and recipe.max_length is None
    assert recipe.lora_target_modules == ["q_proj", "v_proj"] and recipe.report_to == ["tensorboard"]
    assert recipe.trainer_args == {"save_steps": 50.0}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"beta": "0"}, "recipe 'dpo': `beta` must be > 0"),
        ({"beta": "abc"}, "recipe 'dpo': `beta` must be float"),
        ({"objective": "kto"}, "`objective` is 'kto'; choose one of"),
        ({"precision": "fp16"}, "`precision` is 'fp16'"),
        ({"label_smoothing": "0.5"}, "`label_smoothing` must lie in [0, 0.5)"),
        ({"no_such_option": "1"}, "unknown option --no_such_option"),
        ({"output_dir": "x"}, "--output_dir is managed by medbench train"),
        ({"loss_type": "hinge"}, "set `objective: trl` and `trl_loss_type`"),
        ({"precompute_ref_log_probs": "true"}, "cannot precompute reference log-probs for image data"),
        ({"objective": "trl", "trl_loss_type": "sigmoid,bogus"}, "unknown loss types ['bogus']"),
        ({"max_steps": "0"}, "`max_steps` must be -1"),
        ({"backbone": "gpt4v"}, "unknown backbone profile 'gpt4v'"),
    ],
)
def test_bad_settings_fail_with_one_line(overrides, message):
    with pytest.raises(RecipeError) as info:
        load_recipe("dpo", overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, MedbenchError)


def test_robust_recipes_need_label_smoothing():
    assert load_recipe("robust_dpo").label_smoothing == 0.1
    with pytest.raises(RecipeError, match="label_smoothing` must be > 0 for objective robust_dpo"):
        load_recipe("robust_dpo", {"label_smoothing": "0"})


def test_unknown_key_in_recipe_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("objective: dpo\nsave_steps: 10\n")
    with pytest.raises(
        RecipeError, match="unknown key `save_steps`; put trl.DPOConfig arguments under `trainer_args:`"
    ):
        load_recipe(path)
    path.write_text("objective: dpo\ntrainer_args: {save_steps: 10, learning_rate: 0.1}\n")
    with pytest.raises(RecipeError, match="trainer_args.learning_rate` is a recipe field"):
        load_recipe(path)
    path.write_text("objective: [dpo\n")
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(path)


def test_missing_recipe_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match=r"recipe file not found: nope.yaml \(shipped recipes: .*mdpo"):
        load_recipe("nope.yaml")


def test_backbone_profiles_apply_between_recipe_and_overrides():
    names = {profile.name for profile in list_backbones()}
    assert names == {"llava_med_v1_5", "huatuogpt_vision_7b", "huatuogpt_vision_qwen2_5vl"}
    llava = load_recipe("dpo", {"backbone": "llava_med_v1_5"})
    assert llava.max_length == 1024 and "[INST]" in llava.chat_template
    huatuo = load_recipe("mdpo", {"backbone": "huatuogpt_vision_qwen2_5vl"})
    assert huatuo.max_length == 2048 and huatuo.chat_template is None
    assert load_recipe("dpo", {"backbone": "llava_med_v1_5", "max_length": "512"}).max_length == 512
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
    assert load_recipe(str(recipe_file), {"backbone": "huatuogpt_vision_qwen2_5vl"}).max_length == 384
    # What the recipe leaves unset, the profile fills in; the command line wins over both.
    assert load_recipe("dpo", {"backbone": "huatuogpt_vision_qwen2_5vl"}).max_length == 2048
    assert load_recipe(str(recipe_file), {"backbone": "huatuogpt_vision_qwen2_5vl", "max_length": "640"}).max_length == 640
