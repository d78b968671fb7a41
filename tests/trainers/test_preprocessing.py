"""The preprocessed training set: a cached batch equals the per-step collator's batch exactly; the cache is shared by
runs with the same inputs and rebuilt when an input changes."""

import json
import shutil

import pytest
import torch

from medbench.train.collator import CachedCollator, PreferenceCollator, indexed_dataset
from medbench.train.config import load_recipe
from medbench.train.data import load_or_preprocess, load_preference_file, preprocess_records
from medbench.train.objectives import OBJECTIVES

OBJECTIVE_NAMES = ["sft", "dpo", "copo", "mdpo", "mmedpo", "error_targeted"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("MEDBENCH_TRAIN_CACHE", str(folder))
    return folder


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_a_cached_batch_equals_the_per_step_collators_batch_exactly(tiny_model_dirs, pref_file, arch, objective):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dirs[arch])
    records = load_preference_file(pref_file)
    # A max_length that truncates some answers, so the per-record truncation is part of what is cached.
    collator = PreferenceCollator(processor, OBJECTIVES[objective], max_length=40 if arch == "llava" else None)
    cached = CachedCollator(preprocess_records(records, collator))
    dataset = indexed_dataset(records)
    for order in ([0, 1, 2, 3], [3, 1], [2], [1, 3, 0, 2, 1]):
        theirs = collator([records[i] for i in order])
        ours = cached([dataset[i] for i in order])
        assert list(ours) == list(theirs)
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype, key
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=f"{arch} {objective}: {key}")


def _load(pref_file, processor, objective="dpo", max_length=128):
    records = load_preference_file(pref_file)
    return load_or_preprocess(records, pref_file, PreferenceCollator(processor, OBJECTIVES[objective],
                                                                      max_length=max_length))


def test_the_cache_is_reused_by_runs_with_the_same_inputs(tiny_llava_dir, pref_file, cache, monkeypatch):
    from transformers import AutoProcessor

    from medbench.train import data

    first = _load(pref_file, AutoProcessor.from_pretrained(tiny_llava_dir))
    assert [path.name for path in cache.iterdir()] == [f"{first.key}.pt"]

    def refuse(*args, **kwargs):
        raise AssertionError("the cached training set was built again")

    monkeypatch.setattr(data, "preprocess_records", refuse)
    again = _load(pref_file, AutoProcessor.from_pretrained(tiny_llava_dir))  # another run: a fresh processor object
    assert again.key == first.key and len(list(cache.iterdir())) == 1


def test_two_training_cells_share_one_cached_set(tmp_path, tiny_llava_dir, pref_file, cache):
    from medbench.train.run import build_trainer

    settings = {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 128, "precision": "fp32",
                "save_strategy": "no", "report_to": "none"}
    for seed in (1, 2):
        run = build_trainer(load_recipe("dpo", {**settings, "seed": seed}), tiny_llava_dir, pref_file,
                            tmp_path / f"seed{seed}")
        assert isinstance(run.trainer.data_collator, CachedCollator)
    assert len(list(cache.iterdir())) == 1


def test_the_cache_is_rebuilt_when_an_input_changes(tmp_path, tiny_llava_dir, pref_file, cache):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    keys = {_load(pref_file, processor).key}
    keys.add(_load(pref_file, processor, max_length=64).key)  # a collator setting
    keys.add(_load(pref_file, processor, objective="copo").key)  # the objective's rows
    # The data: one answer edited.
    changed = tmp_path / "data"
    shutil.copytree(pref_file.parent, changed)
    lines = (changed / pref_file.name).read_text().splitlines()
    first = json.loads(lines[0])
    first["chosen"] = first["chosen"] + " Indeed."
    (changed / pref_file.name).write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    keys.add(_load(changed / pref_file.name, processor).key)
    # An image's bytes, same file name.
    image = load_preference_file(pref_file)[0]["image"].replace(str(pref_file.parent), str(changed))
    from PIL import Image

    Image.open(image).convert("RGB").rotate(90).save(image)
    keys.add(_load(changed / pref_file.name, processor).key)
    # The processor: another chat template.
    processor.chat_template = processor.chat_template.replace("<|assistant|>", "<|assistant|> ")
    keys.add(_load(pref_file, processor).key)
    assert len(keys) == 6 and len(list(cache.iterdir())) == 6


def test_the_cache_is_bounded_least_recently_used_first(tmp_path, monkeypatch):
    import os

    from medbench.errors import DataError
    from medbench.train.data import cache_limit_bytes, prune_cache

    folder = tmp_path / "cache"
    folder.mkdir()
    sets = {}
    for age, name in enumerate(["newest", "middle", "oldest", "kept"]):
        sets[name] = folder / f"{name}.pt"
        sets[name].write_bytes(b"x" * 1000)
        os.utime(sets[name], (1e9 - age * 100, 1e9 - age * 100))  # "kept" is the oldest of all
    half_written = folder / "abc.123.tmp"
    half_written.write_bytes(b"x")
    os.utime(half_written, (1e9, 1e9))

    removed = prune_cache(folder, keep=sets["kept"], limit=2500)
    # The set just built stays whatever its age; then the least recently used go until 2,500 bytes remain.
    assert removed == [half_written, sets["oldest"], sets["middle"]]
    assert sorted(path.name for path in folder.iterdir()) == ["kept.pt", "newest.pt"]
    assert prune_cache(folder, keep=sets["kept"], limit=2500) == []

    monkeypatch.setenv("MEDBENCH_TRAIN_CACHE_GB", "0.5")
    assert cache_limit_bytes() == 500_000_000
    monkeypatch.setenv("MEDBENCH_TRAIN_CACHE_GB", "lots")
    with pytest.raises(DataError, match="MEDBENCH_TRAIN_CACHE_GB='lots' is not a number"):
        cache_limit_bytes()


def test_a_reused_set_counts_as_recently_used(tiny_llava_dir, pref_file, cache):
    import os

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    first = _load(pref_file, processor)
    path = cache / f"{first.key}.pt"
    os.utime(path, (1e9, 1e9))
    _load(pref_file, processor)
    assert path.stat().st_mtime > 1e9


class _Planted:
    """Unpickling this runs code (it calls ``touch`` on a path): what a writable shared cache folder could hold."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (type(self.path).touch, (self.path,))


def test_a_planted_pickle_in_the_cache_is_not_run_but_rebuilt(tiny_llava_dir, pref_file, cache, tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    first = _load(pref_file, processor)
    path = cache / f"{first.key}.pt"
    ran = tmp_path / "ran"
    torch.save(_Planted(ran), path)
    again = _load(pref_file, processor)
    assert not ran.exists()
    assert again.key == first.key and len(again) == len(first) and again.rows[0][0].keys() == first.rows[0][0].keys()
    assert torch.load(path, weights_only=True)["key"] == first.key  # rebuilt as plain containers
