"""Where a training step goes, layer by layer: the README's profile tables.

    MNISTNET_NUM_THREADS=1 python bench/profile_step.py convnet --batch 128 --steps 20

Times whole training steps of a preset's net (its recipe's optimizer) on random inputs with
mnistnet.fast.profile_step: per layer, the CPU seconds of its forward pass, of its backward
pass (the input gradient and the activation's), and of its kernel gradient with the
optimizer's update of its weights, each as a share of the step. Run it on one thread for a
profile of the work itself (on a team the shares are those of thread 0).
"""

from __future__ import annotations

import argparse

import numpy as np

import mnistnet as mn
from mnistnet import fast


def profile(name: str, batch: int, steps: int) -> str:
    """The table of one preset's step (what the script prints)."""
    model = mn.preset(name)
    rng = np.random.default_rng(0)
    x = rng.random((batch, model.input_dim), dtype=np.float32)
    y = np.eye(model.n_outputs, dtype=np.float32)[rng.integers(0, model.n_outputs, batch)]
    grads = np.zeros_like(model.params)
    _, n_acts, n_deltas = model.plan.buffer_sizes(batch, 1)
    acts, deltas = np.zeros(n_acts, np.float32), np.zeros(n_deltas, np.float32)
    args = (model.plan, model.params, grads, model.optimizer_state, acts, deltas,
            model._loss_code, x, y, model.optimizer.kernel_settings(), 1e-4, 0, (0, 0, 0))
    fast.profile_step(*args, steps=3)  # warm the caches and the pages
    seconds, step = fast.profile_step(*args, steps=steps)
    names = [type(layer).__name__ for layer in model.layers] + ["loss"]
    lines = [f"{name}, batch {batch}, {fast.simd_path()} path, {mn.get_num_threads()} "
             f"thread(s): a step takes {step * 1e3:.2f} ms",
             f"{'layer':<20} {'forward':>8} {'backward':>9} {'grad+update':>12} {'share':>6}"]
    for layer, row in zip(names, seconds, strict=True):
        lines.append(f"{layer:<20} {row[0] * 1e3:8.3f} {row[1] * 1e3:9.3f} "
                     f"{row[2] * 1e3:12.3f} {row.sum() / step:6.1%}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("presets", nargs="+", choices=tuple(mn.PRESETS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print("\n\n".join(profile(name, args.batch, args.steps) for name in args.presets))


if __name__ == "__main__":
    main()
