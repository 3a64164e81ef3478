"""The presets' weights, bit for bit, against digests recorded before the engine was last
reorganised (tests/preset_digests.py says how they are made and re-recorded): a change that
only moves code must leave every bit where it was, on every SIMD path this CPU runs and at 1
and 2 threads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from preset_digests import PRESETS, VARIANTS, preset_digest

import mnistnet as mn
from mnistnet import _kernels

RECORDED = json.loads((Path(__file__).parent / "data" / "preset_digests.json").read_text())


@pytest.mark.parametrize("schedule", ["serial", "team"])
@pytest.mark.parametrize("name", PRESETS + VARIANTS)
def test_training_gives_the_recorded_bits(name, schedule, simd_path):
    """One thread, then a team of two on every batch (short epochs would otherwise run on
    one thread)."""
    if simd_path not in RECORDED:
        pytest.skip(f"no digests recorded for the {simd_path} path")
    before = mn.get_num_threads()
    mn.set_num_threads(1 if schedule == "serial" else 2)
    _kernels._set_epoch_schedule(schedule)
    try:
        assert preset_digest(name) == RECORDED[simd_path][name]
    finally:
        _kernels._set_epoch_schedule("auto")
        mn.set_num_threads(before)
