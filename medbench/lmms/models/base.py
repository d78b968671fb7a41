"""What the medbench model plugins share: request bookkeeping and the unsupported request types."""

from __future__ import annotations

from lmms_eval.api.model import lmms


class GenerationOnlyModel(lmms):
    """An lmms-eval model that answers ``generate_until`` requests only (all medbench tasks are generative)."""

    is_simple = True

    def doc_of(self, request) -> dict:
        """The document behind a ``generate_until`` request."""
        _context, _gen_kwargs, _doc_to_visual, doc_id, task, split = request.args
        return self.task_dict[task][split][doc_id]

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{type(self).__name__} supports generation tasks only (output_type: generate_until)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{type(self).__name__} does not support multi-round generation")
