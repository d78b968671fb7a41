"""What the medbench model plugins share: request bookkeeping, the device, the unsupported request types.

Under ``accelerate launch --num_processes N -m lmms_eval`` lmms-eval gives each process a slice of the
requests, sets the model's rank and world size, and gathers through ``model.device`` (request counts, then
results on rank 0): so every plugin has a ``device``, the process's own GPU when there are GPUs.
"""

from __future__ import annotations

import os
from typing import Any

from lmms_eval.api.model import lmms


def process_device() -> str:
    """This process's device: ``cuda:LOCAL_RANK`` when CUDA is available (one GPU per process), else ``cpu``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


class GenerationOnlyModel(lmms):
    """An lmms-eval model that answers ``generate_until`` requests only (all medbench tasks are generative)."""

    is_simple = True
    device_name = "cpu"

    @property
    def device(self) -> Any:
        """The ``torch.device`` lmms-eval's collectives put their tensors on."""
        import torch

        return torch.device(self.device_name)

    def doc_of(self, request) -> dict:
        """The document behind a ``generate_until`` request."""
        _context, _gen_kwargs, _doc_to_visual, doc_id, task, split = request.args
        return self.task_dict[task][split][doc_id]

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{type(self).__name__} supports generation tasks only (output_type: generate_until)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{type(self).__name__} does not support multi-round generation")
