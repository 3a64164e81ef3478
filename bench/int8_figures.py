"""The int8 export's figures (issue 22): for each preset, float against int8 test accuracy,
the weights' bytes, peak scratch RAM, the Cortex-M4 build's text/data/bss, and host latency of
one image, int8 C against float C.

    MNISTNET_DATA=... python bench/int8_figures.py [perceptron[=EPOCHS] convnet=5 ...]

Each preset (those named, else perceptron, cross-entropy, convnet and lenet5) trains with its
recipe (optimizer, learning rate, batch size; seed 0) for the given epochs (default: the
recipe's, 30, 30, 15 and 10), is quantised on 1,000 training images
(mnistnet.int8.calibration_sample, seed 0), and both its float C (mnistnet.export) and its int8
C are built: with cc -std=c99 -O2 for the latency (the best of 5 passes over 1,000 test
images, the two programs alternating, in one process each) and to check that the int8 C gives
the twin's int8 outputs on all 10,000 test images, bit for bit (the script stops if not); and
with arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os for the sizes (the model's object alone:
its code and constants; -fstack-usage for the stack). Needs a C compiler and
gcc-arm-none-eabi; prints a Markdown table. Not a test: the machine's load moves the
latencies, their ratio less so.

On the Cortex-M4 (QEMU's mps2-an386), each build also runs 3 test images under -icount
shift=0, where the SysTick counts instructions (40 a tick): instructions, not cycles (QEMU
models no timing), for the int8 C and for the float C with soft float and with the FPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import mnistnet as mn
from mnistnet import export, export_int8, int8

PRESETS = ("perceptron", "cross-entropy", "convnet", "lenet5")
ARM = ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-Os", "-std=c99", "-fstack-usage"]
HOST = ["cc", "-std=c99", "-O2"]
PASSES = 5

HARNESS = """\
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <time.h>

#include "NAME.h"

/* argv[1]: float32 images; prints the best time per image over PASSES passes, in ns. */
int main(int argc, char **argv)
{
    static float images[1000][UPPER_INPUT_SIZE];
    float out[UPPER_OUTPUT_SIZE];
    double best = 1e30, checksum = 0;
    FILE *in = argc == 2 ? fopen(argv[1], "rb") : NULL;
    size_t n = in ? fread(images, sizeof images[0], 1000, in) : 0;
    for (int pass = 0; pass < PASSES; ++pass) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (size_t i = 0; i < n; ++i) {
            NAME_predict(images[i], out);
            checksum += out[0];
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        const double ns = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n;
        best = ns < best ? ns : best;
    }
    printf("%.0f %g\\n", best, checksum);
    return n == 0;
}
"""


# Under qemu-system-arm -icount shift=0 every instruction takes 1 ns of virtual time, and the
# mps2-an386's SysTick counts the 25 MHz processor clock: one tick per 40 instructions.
INSTRUCTIONS_PER_TICK = 40
ARM_IMAGES = 3
FPU = ["-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
CORTEX_M = Path(__file__).resolve().parents[1] / "tests" / "cortex_m"
QEMU = ["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none",
        "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel"]

ARM_TIMING = """\
#include <stdint.h>
#include <stdio.h>

#include "NAME.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018)

/* Prints the SysTick ticks NAME_predict takes for the images in images.f32, in total (and
 * with INT8, NAME_predict_int8's on the same pixels as int8, k / 255 -> k - 128). */
int main(void)
{
    static float images[IMAGES][UPPER_INPUT_SIZE];
    float out[UPPER_OUTPUT_SIZE];
    unsigned long ticks = 0, ticks_int8 = 0;
    FILE *in = fopen("images.f32", "rb");
    const int n = in ? (int)fread(images, sizeof images[0], IMAGES, in) : 0;
    SYST_RVR = 0xFFFFFF;
    SYST_CVR = 0;
    SYST_CSR = 5; /* the processor clock, no interrupt */
    for (int i = 0; i < n; ++i) {
        uint32_t start = SYST_CVR;
        NAME_predict(images[i], out);
        ticks += (start - SYST_CVR) & 0xFFFFFF; /* one image takes < 2^24 ticks */
#ifdef INT8
        {
            int8_t q_in[UPPER_INPUT_SIZE], q_out[UPPER_OUTPUT_SIZE];
            for (int k = 0; k < UPPER_INPUT_SIZE; ++k)
                q_in[k] = (int8_t)((int)(images[i][k] * 255.0f + 0.5f) - 128);
            start = SYST_CVR;
            NAME_predict_int8(q_in, q_out);
            ticks_int8 += (start - SYST_CVR) & 0xFFFFFF;
        }
#endif
    }
    printf("ticks %lu images %d int8 %lu\\n", ticks, n, ticks_int8);
    return n == 0;
}
"""


# Writes NAME_predict_int8's outputs for the int8 samples of inputs.i8 to outputs.i8.
BIT_EXACT = """\
#include <stdio.h>

#include "NAME.h"

int main(void)
{
    int8_t in[UPPER_INPUT_SIZE], out[UPPER_OUTPUT_SIZE];
    FILE *src = fopen("inputs.i8", "rb"), *dst = fopen("outputs.i8", "wb");
    if (src == NULL || dst == NULL)
        return 1;
    while (fread(in, 1, sizeof in, src) == sizeof in) {
        NAME_predict_int8(in, out);
        fwrite(out, 1, sizeof out, dst);
    }
    return fclose(dst) != 0;
}
"""


def sh(argv: list[str], cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True).stdout


def train(name: str, epochs: int, x: np.ndarray, y: np.ndarray) -> mn.Model:
    model = mn.preset(name, seed=0)
    model.fit(x, y, epochs=epochs, batch_size=mn.RECIPES[name]["batch_size"], verbose=0)
    return model


def harness(folder: Path, name: str, source: Path) -> Path:
    text = HARNESS.replace("UPPER", name.upper()).replace("NAME", name).replace(
        "PASSES", str(PASSES))
    (folder / f"{name}_bench.c").write_text(text)
    program = folder / f"{name}_bench"
    sh([*HOST, source.name, f"{name}_bench.c", "-o", program.name, "-lm"], folder)
    return program


def latencies(programs: list[Path], images: Path) -> list[float]:
    """ns per image of each program: the best of three alternating runs."""
    best = [float("inf")] * len(programs)
    for _ in range(3):
        for i, program in enumerate(programs):
            best[i] = min(best[i], float(sh([str(program), str(images)],
                                            program.parent).split()[0]))
    return best


def arm_figures(folder: Path, source: Path, predict: list[str]) -> dict[str, int]:
    obj = folder / f"{source.stem}_m4.o"
    sh([*ARM, "-c", source.name, "-o", obj.name], folder)
    text, data, bss = (int(v) for v in sh(["arm-none-eabi-size", obj.name],
                                          folder).splitlines()[1].split()[:3])
    frames = {}
    for line in (folder / f"{obj.stem}.su").read_text().splitlines():
        where, frame, _ = line.split("\t")
        frames[where.rsplit(":", 1)[-1]] = int(frame)
    return {"text": text, "data": data, "bss": bss,
            "stack": sum(frames.get(f, 0) for f in predict)}


def arm_instructions(folder: Path, source: Path, name: str, fpu: bool,
                     int8: bool = False) -> tuple[float, float]:
    """Instructions per image of <name>_predict (and with int8, of <name>_predict_int8) on
    the emulated Cortex-M4 (-Os; soft float, or the FPU), counted through SysTick under
    QEMU's -icount."""
    flags = [*ARM[:-1], *(FPU if fpu else []), *(["-DINT8"] if int8 else [])]
    tag = f"{name}_{'fpu' if fpu else 'soft'}"
    (folder / f"{tag}_timing.c").write_text(ARM_TIMING.replace("UPPER", name.upper()).replace(
        "NAME", name).replace("IMAGES", str(ARM_IMAGES)))
    for c_file in (source, folder / f"{tag}_timing.c", CORTEX_M / "startup.c"):
        sh([*flags, "-c", str(c_file), "-o", f"{tag}_{c_file.stem}.o"], folder)
    sh([*ARM[:4], *(FPU if fpu else []), "--specs=nano.specs", "--specs=rdimon.specs",
        "-nostartfiles", "-T", str(CORTEX_M / "link.ld"), f"{tag}_{source.stem}.o",
        f"{tag}_{tag}_timing.o", f"{tag}_startup.o", "-lm", "-o", f"{tag}.elf"], folder)
    out = sh([*QEMU, f"{tag}.elf"], folder).split()
    ticks, images, ticks_int8 = int(out[1]), int(out[3]), int(out[5])
    return (ticks * INSTRUCTIONS_PER_TICK / images,
            ticks_int8 * INSTRUCTIONS_PER_TICK / images)


def c_int8_outputs(folder: Path, name: str, source: Path, x_int8: np.ndarray) -> np.ndarray:
    """<name>_predict_int8's outputs for the rows of x_int8, from the C built for this
    machine."""
    (folder / f"{name}_exact.c").write_text(BIT_EXACT.replace("UPPER", name.upper()).replace(
        "NAME", name))
    sh([*HOST, "-Wall", "-Wextra", "-Werror", "-pedantic", source.name, f"{name}_exact.c",
        "-o", f"{name}_exact", "-lm"], folder)
    np.ascontiguousarray(x_int8).tofile(folder / "inputs.i8")
    sh([str(folder / f"{name}_exact")], folder)
    return np.fromfile(folder / "outputs.i8", dtype=np.int8).reshape(len(x_int8), -1)


def figures(name: str, epochs: int, data, folder: Path) -> dict[str, object]:
    (x_train, y_train), (x_test, y_test) = data
    model = train(name, epochs, x_train, y_train)
    q = mn.quantize(model, int8.calibration_sample(x_train, int8.DEFAULT_CALIBRATION_ROWS))
    float_classes, int8_classes = model.predict(x_test).argmax(1), q.predict(x_test).argmax(1)
    acc_float, acc_int8 = ((classes == y_test).mean() for classes in (float_classes,
                                                                      int8_classes))
    c = name.replace("-", "_")
    _, float_c = export.export_c(model, folder, f"{c}_f32")
    _, int8_c = q.export_c(folder, f"{c}_i8")
    x_int8 = q.quantize_input(x_test)
    mismatches = int((c_int8_outputs(folder, f"{c}_i8", int8_c, x_int8)
                      != q.predict_int8(x_int8)).sum())
    if mismatches:
        raise SystemExit(f"{name}: the int8 C differs from the twin on {mismatches} outputs")
    float_scratch = 4 * sum(export.c_program(model, "m").buffers.values())
    images = folder / "images.f32"
    np.ascontiguousarray(x_test[:1000]).tofile(images)
    ns_float, ns_int8 = latencies([harness(folder, f"{c}_f32", float_c),
                                   harness(folder, f"{c}_i8", int8_c)], images)
    return {"preset": name, "epochs": epochs, "acc_float": float(acc_float),
            "acc_int8": float(acc_int8), "bit_exact": len(x_test),
            "agreement": float((float_classes == int8_classes).mean()),
            "bytes_float": q.float_weight_bytes, "bytes_int8": q.weight_bytes,
            "float_scratch": float_scratch, **export_int8.c_sizes(q),
            "m4_int8": arm_figures(folder, int8_c, [f"{c}_i8_predict", f"{c}_i8_predict_int8"]),
            "m4_float": arm_figures(folder, float_c, [f"{c}_f32_predict"]),
            "ns_float": ns_float, "ns_int8": ns_int8,
            "m4_instructions": {
                "int8": arm_instructions(folder, int8_c, f"{c}_i8", False, int8=True),
                "float_soft": arm_instructions(folder, float_c, f"{c}_f32", False)[0],
                "float_fpu": arm_instructions(folder, float_c, f"{c}_f32", True)[0]}}


def table(rows: list[dict]) -> str:
    lines = ["| preset (epochs) | test acc. float → int8 (same class) | int8 C = twin | weights "
             "float → int8 | scratch RAM float → int8 (int8_predict / predict) | Cortex-M4 "
             "int8 model.o text/data/bss (float) | stack (frames) | host ns/image float → "
             "int8 | Cortex-M4 instructions/image: int8 predict (predict_int8); float soft, "
             "FPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m4, m4f, mi = r["m4_int8"], r["m4_float"], r["m4_instructions"]
        lines.append(
            f"| {r['preset']} ({r['epochs']}) | {100 * r['acc_float']:.2f}% → "
            f"{100 * r['acc_int8']:.2f}% ({100 * (r['acc_int8'] - r['acc_float']):+.2f}; "
            f"{100 * r['agreement']:.2f}%) | {r['bit_exact']:,} images | "
            f"{r['bytes_float']:,} → {r['bytes_int8']:,} B | {r['float_scratch']:,} → "
            f"{r['scratch_bytes']:,} / {r['predict_scratch_bytes']:,} B | "
            f"{m4['text']:,}/{m4['data']}/{m4['bss']} ({m4f['text']:,}/{m4f['data']}/"
            f"{m4f['bss']}) | {m4['stack']:,} B ({m4f['stack']:,}) | "
            f"{r['ns_float']:,.0f} → {r['ns_int8']:,.0f} ({r['ns_float'] / r['ns_int8']:.2f}x) | "
            f"{mi['int8'][0] / 1e6:.2f}M ({mi['int8'][1] / 1e6:.2f}M); "
            f"{mi['float_soft'] / 1e6:.2f}M, "
            f"{mi['float_fpu'] / 1e6:.2f}M |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    epochs = {}
    for arg in argv or PRESETS:
        preset, _, n = arg.partition("=")
        epochs[preset] = int(n) if n else mn.RECIPES[preset]["epochs"]
    data = mn.load_mnist(os.environ.get("MNISTNET_DATA"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, n in epochs.items():
            rows.append(figures(name, n, data, Path(tmp)))
            print(rows[-1], flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
