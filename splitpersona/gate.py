"""The gate: in masked mode the adapter acts from the last split-personality token onward.

This torch-free definition builds `Sample.persona_mask`; `splitpersona.adapter` configures peft's
activated LoRA to gate the same positions, and `adapter.peft_gate` reads peft's own choice back
so tests can prove the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence


def gate_start(input_ids: Sequence[int], split_id: int) -> int | None:
    """Index of the last split token, where the adapter switches on; None if there is none."""
    return next((i for i in range(len(input_ids) - 1, -1, -1) if input_ids[i] == split_id), None)


def gate_mask(input_ids: Sequence[int], split_id: int) -> list[int]:
    start = gate_start(input_ids, split_id)
    if start is None:
        return [0] * len(input_ids)
    return [0] * start + [1] * (len(input_ids) - start)
