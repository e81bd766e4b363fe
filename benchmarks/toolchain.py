"""Backbone latency through the PyTorch 2 toolchain: eager vs torch.compile vs torch.export vs ONNX.

    python benchmarks/toolchain.py                       # 224x224 and 800x1344
    python benchmarks/toolchain.py --sizes 224x224       # one size

SOFT-Tiny-Norm's four pyramid features (forward_intermediates), batch 1, torch.no_grad, the
detection configs' landmark bound (100) at 800x1344 and the faithful landmarks at 224. Each size
runs in its own subprocess, all cases of a size side by side in it: one warm-up pass, then the
median of --repeats passes. Cases:
- eager: kernel_method "auto" (the compiled soft_d2 op where it is built);
- eager, pure PyTorch: kernel_method "torch" (what export records);
- torch.compile: Inductor over the eager model (the soft_d2 op is one node of the graph); the
  compile time (first call) is reported apart;
- torch.export: the exported program (tools/export_model.py's), run as a module;
- ONNX: the same program through torch.onnx.export and onnxruntime (CPU).
Prints a markdown table and writes no file: its numbers are copied by hand into
docs/BENCHMARKS.md (the PyTorch 2 toolchain section), with the command that produced them.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (docs/IMPLEMENTATION.md)

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DETECTION_BOUND = 100


def median_time(fn, x, repeats: int) -> float:
    fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_size(height: int, width: int, repeats: int, threads: int) -> dict:
    import timm
    import torch

    import soft_d2  # noqa: F401  (registers the variants)

    torch.set_num_threads(threads)
    bound = DETECTION_BOUND if height * width > 224 * 224 else None

    class Pyramid(torch.nn.Module):
        def __init__(self, kernel_method: str):
            super().__init__()
            self.net = timm.create_model("soft_norm_tiny", num_classes=0, max_landmarks=bound,
                                         kernel_method=kernel_method).eval()

        def forward(self, x):
            return tuple(self.net.forward_intermediates(x, intermediates_only=True))

    torch.manual_seed(0)
    eager, pure = Pyramid("auto"), Pyramid("torch")
    pure.load_state_dict(eager.state_dict())
    x = torch.randn(1, 3, height, width)
    rows = {}
    with torch.no_grad():
        reference = eager(x)
        rows["eager"] = median_time(eager, x, repeats)
        rows["eager, pure PyTorch"] = median_time(pure, x, repeats)

        compiled = torch.compile(eager)
        start = time.perf_counter()
        out = compiled(x)
        compile_s = time.perf_counter() - start
        diff_compile = max(float((a - b).abs().max()) for a, b in zip(out, reference))
        rows["torch.compile"] = median_time(compiled, x, repeats)

        start = time.perf_counter()
        program = torch.export.export(pure, (x,), strict=False).module()
        export_s = time.perf_counter() - start
        rows["torch.export"] = median_time(program, x, repeats)

        import onnxruntime

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "backbone.onnx")
            start = time.perf_counter()
            torch.onnx.export(pure, (x,), dynamo=True, input_names=["images"]).save(path)
            onnx_s = time.perf_counter() - start
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            runtime = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            feed = {"images": x.numpy()}
            rows["ONNX (onnxruntime)"] = median_time(lambda _: runtime.run(None, feed), x, repeats)
    return {"size": f"{height}x{width}", "landmarks": f"<= {bound}" if bound else "faithful", "seconds": rows,
            "compile_s": compile_s, "export_s": export_s, "onnx_export_s": onnx_s, "compile_max_diff": diff_compile}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["224x224", "800x1344"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one size, in a subprocess
    args = parser.parse_args()
    if args.case:
        h, w = (int(v) for v in args.case.split("x"))
        print(json.dumps(run_size(h, w, args.repeats, args.threads)))
        return
    import torch

    results = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--case", size, "--repeats", str(args.repeats),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"median of {args.repeats}\n")
    print("| input | landmarks | " + " | ".join(results[0]["seconds"]) + " |")
    print("|---|---|" + "---|" * len(results[0]["seconds"]))
    for r in results:
        base = r["seconds"]["eager"]
        cells = [f"{s:.3f} s ({s / base:.2f}x)" for s in r["seconds"].values()]
        print(f"| {r['size']} | {r['landmarks']} | " + " | ".join(cells) + " |")
    print()
    for r in results:
        print(f"{r['size']}: torch.compile first call {r['compile_s']:.0f} s (max |diff| from eager "
              f"{r['compile_max_diff']:.1e}), torch.export {r['export_s']:.0f} s, ONNX export {r['onnx_export_s']:.0f} s")


if __name__ == "__main__":
    main()
