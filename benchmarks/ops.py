"""Benchmark of SOFT's attention product out = G(Q, L) @ M @ (G(Q, L)^T V), side by side:

  compiled  soft_d2.ops.nystrom_attention(kernel_method="compiled")  (streamed C++/CUDA op)
  torch     soft_d2.ops.nystrom_attention(kernel_method="torch")     (dense formula for small
            N x m, streamed PyTorch above soft_d2.ops.STREAM_ELEMENTS)
  release   the release's formula: K1 = exp(-(q^2 @ 1 + 1 @ k^2 - 2 q k^T) / 2), then
            (K1 @ M) @ (K1^T @ V) in that order

M is a fixed m x m matrix (the Newton inverse is not what is measured). Every (shape, impl, mode)
runs in its own subprocess: time = median of --repeats runs after one warm-up, peak = the
process's resident-set high-water mark minus the resident set before the first run
(Linux: /proc/self/clear_refs resets the mark), over all runs including the warm-up, i.e. the
memory the computation itself needs.

  python benchmarks/ops.py                   # CPU table
  python benchmarks/ops.py --device cuda     # times with CUDA events, peak = torch.cuda.max_memory_allocated
  python benchmarks/ops.py --shapes "224 stage-1" --write out.md   # a partial run, written to out.md

Writing (the rule of every benchmark script that writes, see backbone.doc_target): a full run
writes the section named after the device, "ops-cpu" or "ops-cuda", of docs/BENCHMARKS.md (only
the text between its markers changes; see benchmarks/doc_sections.py); --write FILE writes into
FILE instead (a CPU and a CUDA run into one file: two sections); --no-write prints only. --shapes,
--impls and --modes other than all make a partial run: it prints only unless --write FILE is
given. Each table is headed by one line naming the machine (the GPU on CUDA), thread count, torch
version, the command and the date.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# benchmarks/ is on sys.path when this file runs as a script
from backbone import DOC, ROOT, add_write_options, command_line, doc_target, header_line  # noqa: E402
from doc_sections import write_section  # noqa: E402

SHAPES = {  # name: (batch, heads, N, m, d)
    "224 stage-1": (1, 2, 3136, 49, 32),
    "800x1344 stage-1": (1, 2, 67200, 1050, 32),
    # the same grid with landmarks capped at the detection default (soft_d2.d2 DEFAULT_MAX_LANDMARKS)
    "800x1344 stage-1 capped": (1, 2, 67200, 100, 32),
}
IMPLS = ("compiled", "torch", "release")
MODES = ("fwd", "fwd+bwd")


def release_formula(q, k, v, middle_matrix):
    """The release's K1 and multiplication order (float32, no chunking)."""
    d, n, m = q.shape[-1], q.shape[-2], k.shape[-2]
    ones_dm = torch.ones(d, m, dtype=q.dtype, device=q.device)
    ones_nd = torch.ones(n, d, dtype=q.dtype, device=q.device)
    sq = torch.matmul(q * q, ones_dm) + torch.matmul(ones_nd, (k * k).transpose(-1, -2))
    k1 = torch.exp(-0.5 * (sq - 2 * torch.matmul(q, k.transpose(-1, -2))))
    return torch.matmul(torch.matmul(k1, middle_matrix), torch.matmul(k1.transpose(-1, -2), v))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_case(shape: str, impl: str, mode: str, repeats: int, device: str, threads: int) -> dict:
    """One measurement, in this process."""
    from soft_d2 import ops

    if threads:
        torch.set_num_threads(threads)

    batch, heads, n, m, d = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(batch, heads, n, d, generator=gen) * 0.3).to(device)
    lm = (torch.randn(batch, heads, m, d, generator=gen) * 0.3).to(device)
    v = torch.randn(batch, heads, n, d, generator=gen).to(device)
    middle_matrix = (torch.randn(batch, heads, m, m, generator=gen) / m).to(device)
    grad = torch.randn(batch, heads, n, d, generator=gen).to(device)
    backward = mode == "fwd+bwd"
    leaves = [t.requires_grad_(backward) for t in (q, lm, v)]

    def step():
        q, lm, v = leaves
        with torch.set_grad_enabled(backward):
            if impl == "release":
                out = release_formula(q, lm, v, middle_matrix)
            else:
                out = ops.nystrom_attention(q, lm, v, lambda s: torch.matmul(middle_matrix, s), impl)
            if backward:
                out.backward(grad)
                for t in leaves:
                    t.grad = None
        return out

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # Peak over every run, the warm-up included (after it, freed memory the allocator keeps would
    # hide the peak); baseline = inputs plus the runtime's own start-up buffers.
    torch.matmul(torch.randn(64, 64, device=device), torch.randn(64, 64, device=device)).exp()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_kib("VmRSS:") * 1024
    step()
    sync()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _rss_kib("VmHWM:") * 1024) - base
    return {"shape": shape, "impl": impl, "mode": mode, "time_s": statistics.median(times),
            "peak_bytes": max(peak, 0), "repeats": repeats}


def run_in_subprocess(shape, impl, mode, repeats, device, threads) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps([shape, impl, mode, repeats, device, threads])]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{shape} {impl} {mode} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = ["| shape (B=1, 2 heads, d=32) | mode | impl | time (s) | peak memory (MiB) | vs release: time | vs release: memory |",
             "|---|---|---|---:|---:|---:|---:|"]
    key = {(r["shape"], r["mode"], r["impl"]): r for r in results}
    for r in results:
        rel = key.get((r["shape"], r["mode"], "release"))
        t_ratio = f"{r['time_s'] / rel['time_s']:.2f}x" if rel else "-"
        m_ratio = f"{r['peak_bytes'] / rel['peak_bytes']:.3f}x" if rel and rel["peak_bytes"] else "-"
        n, m = SHAPES[r["shape"]][2:4]
        lines.append(f"| {r['shape']} (N={n}, m={m}) | {r['mode']} | {r['impl']} | {r['time_s']:.4f} | "
                     f"{r['peak_bytes'] / 2**20:.1f} | {t_ratio} | {m_ratio} |")
    return "\n".join(lines)


def measure_ceilings() -> tuple[float, float]:
    """(device-to-device bandwidth in bytes/s counting read + write, float32 GEMM flop/s without
    TF32), measured once here: the SIMT float32 rate is what the fused kernels use."""
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(2**28 // 4, device="cuda")
    y = torch.empty_like(x)
    a, b = torch.randn(8192, 8192, device="cuda"), torch.randn(8192, 8192, device="cuda")

    def timed(fn, reps=10):
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(reps):
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)

    bandwidth = 2 * x.numel() * 4 / timed(lambda: y.copy_(x))
    flops = 2 * 8192**3 / timed(lambda: torch.mm(a, b))
    return bandwidth, flops


def floors_table(results: list[dict], bandwidth: float, rate: float) -> str:
    """Per shape: the fused forward's floor max(flops / fp32 rate, bytes / bandwidth) and the gap,
    for the ceilings ``bandwidth`` (bytes/s) and ``rate`` (flop/s) of measure_ceilings."""
    lines = ["| shape | fused fwd GFLOP | min MB moved | floor (ms) | compiled fwd (ms) | gap |",
             "|---|---:|---:|---:|---:|---:|"]
    for shape, (batch, heads, n, m, d) in SHAPES.items():
        got = [r for r in results if r["shape"] == shape and r["impl"] == "compiled" and r["mode"] == "fwd"]
        if not got:
            continue
        bh = batch * heads
        flops = 2 * bh * (2 * n * m * d + 2 * n * m * d)  # two passes, each distance + product GEMM
        moved = 4 * bh * (3 * n * d + m * d + m * m)      # q, v, out, landmarks, M: read/written once
        floor = max(flops / rate, moved / bandwidth)
        t = got[0]["time_s"]
        lines.append(f"| {shape} | {flops / 1e9:.1f} | {moved / 1e6:.1f} | {floor * 1e3:.3f} | "
                     f"{t * 1e3:.3f} | {t / floor:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int, default=0, help="timed runs per case (default: 7 small, 3 large)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    add_write_options(p)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_case(*json.loads(args.one))))
        return
    results = []
    for shape in args.shapes:
        repeats = args.repeats or (7 if SHAPES[shape][2] < 10_000 else 3)
        for mode in args.modes:
            for impl in args.impls:
                r = run_in_subprocess(shape, impl, mode, repeats, args.device, args.threads)
                print(f"{shape:18s} {mode:8s} {impl:9s} {r['time_s']:.4f} s  {r['peak_bytes'] / 2**20:9.1f} MiB",
                      flush=True)
                results.append(r)
    ceilings = measure_ceilings() if args.device == "cuda" else None
    threads = args.threads or torch.get_num_threads()
    body = section_body(results, args.device, threads, command_line(), ceilings)
    print("\n" + body)
    partial = set(args.shapes) != set(SHAPES) or set(args.impls) != set(IMPLS) or set(args.modes) != set(MODES)
    target = doc_target(args.write, args.no_write, partial)
    if target is not None:
        write_doc(body, args.device, target)


def section_body(results: list[dict], device: str, threads: int, command: str, ceilings=None) -> str:
    """The "ops-DEVICE" section: the header line and the table; on CUDA (``ceilings`` =
    measure_ceilings()) also the floors table, headed the same way. The document's own heading
    and prose stay outside the section."""
    header = header_line(command, threads, ("torch",), device)
    text = f"{header}\n\n{table(results)}\n"
    if ceilings is not None:
        bandwidth, rate = ceilings
        text += (f"\nCeilings measured here: copy {bandwidth / 1e12:.2f} TB/s, float32 GEMM (no TF32) "
                 f"{rate / 1e12:.1f} TFLOP/s.\n\n{header}\n\n{floors_table(results, bandwidth, rate)}\n")
    return text


def write_doc(body: str, device: str, path: Path = DOC) -> None:
    """``body`` (section_body's) as the "ops-DEVICE" section of the document at ``path`` (nothing
    else in it changes)."""
    write_section(path, f"ops-{device}", body, "benchmarks/ops.py")


import torch  # noqa: E402  (after the docstring-driven argparse setup; subprocesses import it too)

if __name__ == "__main__":
    main()
