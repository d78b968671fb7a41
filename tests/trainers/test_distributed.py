"""Two CPU processes under ``accelerate launch`` with the shipped config, for two steps."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from medbench.train.config import ACCELERATE_DIR

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_shipped_accelerate_configs_parse():
    configs = {path.stem: yaml.safe_load(path.read_text()) for path in ACCELERATE_DIR.glob("*.yaml")}
    assert configs["zero3"]["distributed_type"] == "DEEPSPEED"
    assert configs["zero3"]["deepspeed_config"]["zero_stage"] == 3
    assert configs["zero3"]["deepspeed_config"]["zero3_save_16bit_model"] is True
    assert configs["multi_gpu"]["mixed_precision"] == "bf16"
    assert configs["cpu_2proc"]["num_processes"] == 2


def test_two_cpu_processes_train_mdpo_with_lora(tmp_path, tiny_model_dirs, pref_file):
    out_dir = tmp_path / "ddp"
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # keep gloo on loopback on machines without a routable interface
        "MASTER_ADDR": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        str(ACCELERATE_DIR / "cpu_2proc.yaml"),
        "--main_process_port",
        str(_free_port()),
        "-m",
        "medbench",
        "train",
        "--config",
        "mdpo",
        "--model",
        str(tiny_model_dirs["llava"]),
        "--data",
        str(pref_file),
        "--output_dir",
        str(out_dir),
        "--use_lora",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "1",
        "--save_strategy",
        "no",
        "--max_length",
        "128",
        "--learning_rate",
        "1e-3",
        "--warmup_steps",
        "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metadata = json.loads((out_dir / "medbench_train.json").read_text())
    assert metadata["hyperparameters"]["num_processes"] == 2
    assert metadata["hyperparameters"]["global_batch_size"] == 2
    assert metadata["result"]["global_step"] == 2
    # Two steps of one record on each of two processes cover the four records once.
    assert metadata["result"]["metrics"]["epoch"] == 1.0
    assert (out_dir / "merged" / "model.safetensors").is_file()
    log = [json.loads(line) for line in (out_dir / "training_log.jsonl").read_text().splitlines()]
    assert {"loss/dpo", "loss/copo", "loss/anchor"} <= set(log[0])
