"""The image-blind twins through lmms-eval's own task loading: same prompts, same image-token counts, uniform image."""

import numpy as np
import pytest

from medbench.commands.demo import demo_environment
from medbench.taskfiles import tasks_dir


@pytest.fixture(scope="module")
def twin_tasks(monkeypatch_module):
    from lmms_eval.tasks import TaskManager, get_task_dict

    for key, value in demo_environment().items():
        monkeypatch_module.setenv(key, value)
    manager = TaskManager("ERROR", include_path=str(tasks_dir()))
    return get_task_dict(["medbench_vqa_rad", "medbench_vqa_rad_blind"], manager)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_blind_twin_keeps_prompts_and_token_counts_and_its_image_is_uniform(twin_tasks, tiny_llava_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    sighted, blind = twin_tasks["medbench_vqa_rad"], twin_tasks["medbench_vqa_rad_blind"]
    docs, blind_docs = list(sighted.test_docs()), list(blind.test_docs())
    assert len(docs) == len(blind_docs) == 24
    for doc, blind_doc in zip(docs, blind_docs, strict=True):
        assert blind_doc["id"] == doc["id"] and blind_doc["answer"] == doc["answer"]
        prompt = sighted.doc_to_text(doc)
        assert blind.doc_to_text(blind_doc) == prompt
        [image], [uniform] = sighted.doc_to_visual(doc), blind.doc_to_visual(blind_doc)
        assert uniform.size == image.size
        pixels = np.asarray(uniform)
        assert (pixels == pixels[0, 0]).all()  # one colour, and the same for every document
        assert tuple(pixels[0, 0]) == (128, 128, 128)
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
            add_generation_prompt=True)
        counts = [processor(images=[picture], text=[text], return_tensors="pt")["input_ids"].shape[1]
                  for picture in (image, uniform)]
        assert counts[0] == counts[1]


def test_the_blind_group_runs_through_lmms_evals_own_llava_backend(tiny_llava_dir, tmp_path):
    """``--tasks medbench_blind`` with lmms-eval's ``llava_hf`` (no medbench model code): every twin answers."""
    pytest.importorskip("decord")  # lmms-eval's llava_hf imports it
    from lmms_here import lmms_eval_in_process

    from medbench.commands.eval import run_lmms_eval
    from medbench.results import find_runs

    args = ["--model", "llava_hf", "--model_args", f"pretrained={tiny_llava_dir},device=cpu,device_map=cpu",
            "--tasks", "medbench_blind", "--limit", "2", "--output_path", str(tmp_path), "--verbosity", "WARNING"]
    with lmms_eval_in_process():
        run_lmms_eval(args, demo_environment())
    run = find_runs(tmp_path)[-1]
    for task in ("medbench_vqa_rad_blind", "medbench_slake_blind", "medbench_pathvqa_blind"):
        assert run.raw["n-samples"][task]["effective"] == 2, task
        assert len(run.samples[task].read_text().splitlines()) == 2
