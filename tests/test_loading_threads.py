"""Loads on several threads at once, and loads that come out incomplete.

diffusers and transformers patch process-wide state while they build a model (accelerate's
``init_empty_weights`` patches ``nn.Module.register_parameter``). Two loads that overlapped gave
each other "meta" weights with no data, and left the patch in place for the rest of the process.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from pipelines import loading
from pipelines.errors import ModelUnavailable


def _empty_weights(pipe: Any) -> list[str]:
    return [
        f"{component}.{name}"
        for component, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
        for name, tensor in (*module.named_parameters(), *module.named_buffers())
        if tensor.is_meta
    ]


def test_two_threads_loading_at_once_both_get_every_weight_and_leave_torch_as_it_was() -> None:
    for _ in range(2):
        start = threading.Barrier(2)
        outcome: dict[int, Any] = {}

        def load(slot: int, start: threading.Barrier = start, outcome: dict[int, Any] = outcome) -> None:
            start.wait()
            try:
                outcome[slot] = _empty_weights(loading.load_builtin_demo(torch.float32))
            except Exception as exc:  # reported below with the other thread's outcome
                outcome[slot] = repr(exc)

        threads = [threading.Thread(target=load, args=(slot,)) for slot in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert outcome == {0: [], 1: []}
    assert not torch.nn.Linear(2, 2).weight.is_meta, "a load left torch building empty modules"
    assert torch.get_default_dtype() == torch.float32


def test_a_model_that_loads_with_empty_weights_fails_at_load_naming_them() -> None:
    import accelerate

    loading.import_libraries()
    # What a patch left behind by someone else's interrupted load does to every later load.
    with accelerate.init_empty_weights(), pytest.raises(ModelUnavailable) as failure:
        loading.load_folder(loading.DEMO_FOLDER, torch.float32)
    message = str(failure.value)
    assert "demo-model" in message
    assert "loaded incompletely" in message
    assert "text_encoder.embeddings.position_embedding.weight" in message
