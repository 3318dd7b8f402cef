"""Time and peak memory of one jitted Bort correction against matrix size.

For every mode (``bort_jax.MODES``) and m, n in {256, 1024, 4096} (square,
wide and tall float32 matrices, rows = output units), prints in one run: the
time of ``jax.jit(bort_correction)``, its arithmetic and achieved rate (full
modes only; the norm modes are memory-bound), and its extra memory from the
compiled executable's memory analysis (temporaries, and temporaries plus the
output), with a large matmul's rate measured in the same run.

``--large`` adds a 65536-way output head, a 65536×1024 matrix: l1-fullrow
(about 17.6 TFLOP; run once), l2-full and l2-row, each in a fresh subprocess
that also reports the process's peak-RSS increase over the call and XLA's
buffer assignment (which buffers dominate). It then compiles, without running,
l1-fullrow at other block sizes and unblocked (``block_size=None``: a 65536²
Gram, 16 GiB) to report their memory analysis, and checks the 2 GiB target.

    python benchmarks/scaling.py --quick       # 256 and 1024 only, < 1 min
    python benchmarks/scaling.py               # + 4096
    python benchmarks/scaling.py --large       # + the 65536×1024 head
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import glob
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import param_sets  # noqa: E402
import timing  # noqa: E402

import bort_jax  # noqa: E402

MiB = 2.0**20
TARGET_BYTES = 2 * 2**30  # the 2 GiB extra-memory target for the large head
LARGE_SHAPE = (65536, 1024)
LARGE_MODES = ("l1-fullrow", "l2-full", "l2-row")
SWEEP_BLOCKS = (512, 1024, 2048, 4096, 8192, 16384, None)
FULL_MODES = tuple(param_sets.PRODUCT_MACS)  # the modes with a Gram
DEFAULT_BLOCK = bort_jax.KernelOptions().block_size


def block_of(mode: str, m: int, n: int, block_size) -> str:
  """How an l1 full mode's k×k sign matrix is built ('' for other modes)."""
  if not mode.startswith("l1-full"):
    return ""
  # The row mode takes the fan-in's Gram on more units than fan-in.
  k = min(m, n) if mode == "l1-fullrow" else n
  if block_size is None or k <= block_size:
    return "whole"
  return str(block_size)


def compile_case(mode: str, m: int, n: int, block_size, amplitude):
  """The AOT-compiled ``jit(bort_correction)`` for one f32 (m, n) matrix."""
  options = bort_jax.KernelOptions(block_size=block_size)

  def bort_scaling_case(w):
    return bort_jax.bort_correction(w, mode, amplitude, kernel_options=options)

  spec = jax.ShapeDtypeStruct((m, n), jnp.float32)
  return jax.jit(bort_scaling_case).lower(spec).compile()


def memory(compiled) -> dict:
  """The compiled executable's memory analysis, in bytes.

  ``extra`` is what one call allocates beyond its argument: temporaries plus
  the (non-aliased) output. On CPU this jax's ``peak_memory_in_bytes`` is only
  argument + output, so it is recorded but not used.
  """
  stats = compiled.memory_analysis()
  fields = ("temp_size_in_bytes", "output_size_in_bytes",
            "argument_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes", "peak_memory_in_bytes")
  out = {f.removesuffix("_size_in_bytes").removesuffix("_in_bytes"):
         int(getattr(stats, f)) for f in fields if hasattr(stats, f)}
  out["extra"] = out["temp"] + out["output"] - out.get("alias", 0)
  return out


def make_input(m: int, n: int, seed: int = 0) -> jax.Array:
  """Rows of norm about 1 (the amplitude's scale), built without jax temps."""
  x = np.random.default_rng(seed).standard_normal((m, n), dtype=np.float32)
  x *= np.float32(1.0 / np.sqrt(n))
  out = jax.block_until_ready(jax.device_put(x))
  # device_put holds a reference to the host array for a while; free it now
  # so that its pages are not reused by (and hidden from) the measured call.
  del x
  gc.collect()
  return out


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
  """Returns freed heap pages to the OS (glibc), so they are not reused."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _reset_peak_rss() -> bool:
  """Resets the kernel's RSS high-water mark (Linux ≥ 4.0), if allowed."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------
# XLA's buffer assignment: which buffers make up the memory analysis.


def _dump_env(dump_dir: str) -> dict:
  env = dict(os.environ)
  flags = (f"--xla_dump_to={dump_dir} "
           "--xla_dump_hlo_module_re=.*bort_scaling_case.* "
           "--xla_dump_hlo_pass_re=NONE_XX")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
  return env


_ALLOC = re.compile(r"^allocation (\d+): size (\d+), (.*)$")
_VALUE = re.compile(
    r"^ value: <\d+ (\S+) @\d+> \(size=(\d+),offset=(\d+)\): (.*)$")


def buffer_report(dump_dir: str, min_bytes: float = MiB) -> list:
  """The buffer-assignment dump's allocations of at least ``min_bytes``.

  Each is ``dict(kind, bytes, regions)``; a temporary allocation's regions are
  its distinct (offset, size) slices, each listing the HLO values that share
  it (e.g. the Gram block and its sign, computed in place).
  """
  files = sorted(glob.glob(os.path.join(dump_dir, "*buffer-assignment.txt")))
  if not files:
    return []
  allocations, current = [], None
  with open(files[-1]) as f:
    for line in f:
      line = line.rstrip("\n")
      if line.startswith("Total bytes used") or line.startswith(
          "Used values"):
        break
      match = _ALLOC.match(line)
      if match:
        kind = match.group(3).split(",")[0].split(" shape")[0].strip(": ")
        current = dict(kind=kind, bytes=int(match.group(2)), regions={})
        allocations.append(current)
        continue
      match = _VALUE.match(line)
      if match and current is not None:
        name, size, offset, shape = match.groups()
        region = current["regions"].setdefault(
            (int(offset), int(size)), dict(bytes=int(size), values=[]))
        short = shape.split("{")[0]
        region["values"].append(f"{name} {short}")
  report = []
  for alloc in allocations:
    if alloc["bytes"] < min_bytes:
      continue
    regions = sorted(alloc["regions"].values(), key=lambda r: -r["bytes"])
    regions = [dict(bytes=r["bytes"], values=sorted(set(r["values"]))[:4])
               for r in regions if r["bytes"] >= min_bytes]
    report.append(dict(kind=alloc["kind"], bytes=alloc["bytes"],
                       regions=regions))
  return report


# ----------------------------------------------------------------------------
# One case in a fresh process: time, memory analysis, peak RSS, buffers.


def child(spec: dict) -> dict:
  """Runs one case in this (fresh) process; see :func:`in_subprocess`."""
  mode, m, n = spec["mode"], spec["m"], spec["n"]
  compiled = compile_case(mode, m, n, spec["block_size"], spec["amplitude"])
  result = dict(spec, memory=memory(compiled))
  if spec.get("dump_dir"):
    result["buffers"] = buffer_report(spec["dump_dir"])
  if not spec["run"]:
    return result
  x = make_input(m, n)
  _trim_heap()
  rss_before = _rss_bytes()
  reset = _reset_peak_rss()
  peak_before = _peak_rss_bytes()
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(x))
  first = time.perf_counter() - start
  peak_after = _peak_rss_bytes()
  del out
  result.update(
      rss_before=rss_before, peak_reset=reset,
      # The call's extra resident memory: the high-water mark after it less
      # the resident set before it (the mark was reset just before the call;
      # where that is not allowed, the ru_maxrss difference is a lower bound).
      rss_delta=(peak_after - rss_before) if reset else
      (peak_after - peak_before),
      first_call_s=first)
  if spec["repeats"] <= 1 and spec["warmup"] <= 0:
    result["seconds"] = first
  else:
    result["seconds"] = timing.seconds(
        compiled, x, repeats=max(spec["repeats"], 1),
        warmup=max(spec["warmup"] - 1, 0))
  return result


def in_subprocess(mode, m, n, *, block_size, amplitude, repeats=1, warmup=0,
                  run=True, buffers=True) -> dict:
  """One case in a fresh Python process, so its peak RSS is its own."""
  spec = dict(mode=mode, m=m, n=n, block_size=block_size, amplitude=amplitude,
              repeats=repeats, warmup=warmup, run=run)
  with tempfile.TemporaryDirectory(prefix="bort_scaling_") as dump_dir:
    env = dict(os.environ)
    if buffers:
      spec["dump_dir"] = dump_dir
      env = _dump_env(dump_dir)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], env=env,
        capture_output=True, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines()
           if line.startswith("RESULT ")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"case {spec} failed (rc {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  result = json.loads(lines[-1][len("RESULT "):])
  result.pop("dump_dir", None)
  return result


# ----------------------------------------------------------------------------
# The grid, in this process.


def shapes(sizes):
  return [(m, n) for m in sizes for n in sizes]


def measure_grid(sizes, modes, amplitude, repeats, warmup, rss_all):
  rows = []
  for m, n in shapes(sizes):
    x = None if rss_all else make_input(m, n)
    for mode in modes:
      if rss_all:
        row = in_subprocess(mode, m, n, block_size=DEFAULT_BLOCK,
                            amplitude=amplitude, repeats=repeats,
                            warmup=warmup, buffers=False)
      else:
        compiled = compile_case(mode, m, n, DEFAULT_BLOCK, amplitude)
        row = dict(mode=mode, m=m, n=n, block_size=DEFAULT_BLOCK,
                   memory=memory(compiled), seconds=timing.seconds(
                       compiled, x, repeats=repeats, warmup=warmup))
      rows.append(row)
      print(f"  {mode} {m}x{n}: {1e3 * row['seconds']:.2f} ms", flush=True)
  return rows


def table(rows, matmul_rate) -> list[str]:
  header = ("| mode | m | n | block | ms | GFLOP | GFLOP/s | of matmul | "
            "temp MiB | temp+out MiB | RSS Δ MiB |")
  lines = [header, "|---" * (header.count("|") - 1) + "|"]
  for r in rows:
    mode, m, n = r["mode"], r["m"], r["n"]
    flop = param_sets.matrix_flop(mode, m, n)
    ms = 1e3 * r["seconds"]
    full = mode in FULL_MODES
    rate = flop / r["seconds"]
    rss = r.get("rss_delta")
    lines.append(
        f"| {mode} | {m} | {n} | {block_of(mode, m, n, r['block_size'])} | "
        + (f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}") + " | "
        + (f"{flop / 1e9:.3g} | {rate / 1e9:.1f} | {rate / matmul_rate:.0%}"
           if full else "– | – | –")
        + f" | {r['memory']['temp'] / MiB:.1f} | "
        f"{r['memory']['extra'] / MiB:.1f} | "
        + ("–" if rss is None else f"{rss / MiB:.0f}") + " |")
  return lines


def sweep_table(sweep) -> list[str]:
  header = ("| l1-fullrow 65536×1024 block_size | temp MiB | temp+out MiB | "
            "sign block MiB | ≤ 2 GiB |")
  lines = [header, "|---" * (header.count("|") - 1) + "|"]
  k = LARGE_SHAPE[0]
  for block, mem in sweep:
    sign = (k if block is None else min(block, k)) * k * 4
    lines.append(f"| {block} | {mem['temp'] / MiB:.0f} | "
                 f"{mem['extra'] / MiB:.0f} | {sign / MiB:.0f} | "
                 f"{'yes' if mem['extra'] <= TARGET_BYTES else 'no'} |")
  return lines


def buffer_lines(title: str, report: list) -> list[str]:
  lines = [f"{title}:"]
  for alloc in report:
    lines.append(f"  - {alloc['kind']}: {alloc['bytes'] / MiB:.1f} MiB")
    if alloc["kind"].startswith("preallocated-temp"):
      for region in alloc["regions"][:4]:
        lines.append(f"      {region['bytes'] / MiB:.1f} MiB shared by: "
                     + ", ".join(region["values"]))
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="sizes 256 and 1024 only (< 1 min)")
  parser.add_argument("--large", action="store_true",
                      help="also the 65536×1024 head (a few minutes on CPU)")
  parser.add_argument("--sizes", default=None,
                      help="comma-separated m, n values (default 256,1024,"
                      "4096; --quick: 256,1024)")
  parser.add_argument("--modes", default=",".join(bort_jax.MODES))
  parser.add_argument("--amplitude", default="1.0",
                      help="a number or 'ada'")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--large-repeats", type=int, default=1,
                      help="repeats of the large l1-fullrow case (warmup 0)")
  parser.add_argument("--rss-all", action="store_true",
                      help="run every grid case in its own subprocess to get "
                      "its peak-RSS increase too (slower)")
  parser.add_argument("--matmul-size", type=int, default=None)
  parser.add_argument("--json", type=Path, default=None)
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child is not None:
    print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
    return

  amplitude = args.amplitude if args.amplitude == "ada" else float(
      args.amplitude)
  sizes = [int(s) for s in (args.sizes or (
      "256,1024" if args.quick else "256,1024,4096")).split(",")]
  modes = args.modes.split(",")
  unknown = [mode for mode in modes if mode not in bort_jax.MODES]
  if unknown:
    parser.error(f"unknown modes {unknown}; valid: {', '.join(bort_jax.MODES)}")
  gpu = jax.default_backend() != "cpu"
  size = args.matmul_size or (8192 if gpu else 2048)
  rate = timing.matmul_flops_per_second(size)
  print(f"device {timing.device_name()}  jax {jax.__version__}  "
        f"cores {os.cpu_count()}  amplitude {amplitude}  "
        f"f32 matmul {size}^3 at default precision: {rate / 1e9:.1f} GFLOP/s",
        flush=True)

  rows = measure_grid(sizes, modes, amplitude, args.repeats, args.warmup,
                      args.rss_all)
  large, sweep, buffers = [], [], {}
  if args.large:
    m, n = LARGE_SHAPE
    for mode in LARGE_MODES:
      heavy = mode == "l1-fullrow"
      print(f"  {mode} {m}x{n} in a subprocess"
            + (f" (~{param_sets.matrix_flop(mode, m, n) / rate:.0f} s at the matmul "
               "rate)" if heavy else "") + " ...", flush=True)
      row = in_subprocess(
          mode, m, n, block_size=DEFAULT_BLOCK, amplitude=amplitude,
          repeats=args.large_repeats if heavy else args.repeats,
          warmup=0 if heavy else args.warmup, buffers=heavy)
      large.append(row)
      if heavy:
        buffers[f"l1-fullrow {m}×{n}, block_size={DEFAULT_BLOCK} (run)"] = (
            row.get("buffers", []))
      print(f"  {mode} {m}x{n}: {row['seconds']:.2f} s, RSS delta "
            f"{row['rss_delta'] / MiB:.0f} MiB", flush=True)
    for block in SWEEP_BLOCKS:  # compile only, never run
      sweep.append((block, memory(compile_case("l1-fullrow", m, n, block,
                                               amplitude))))
    unblocked = in_subprocess("l1-fullrow", m, n, block_size=None,
                              amplitude=amplitude, run=False)
    buffers[f"l1-fullrow {m}×{n}, block_size=None (compiled, not run)"] = (
        unblocked.get("buffers", []))
  rate_after = timing.matmul_flops_per_second(size)

  print()
  print(f"f32 matmul {size}^3: {rate / 1e9:.1f} GFLOP/s before, "
        f"{rate_after / 1e9:.1f} GFLOP/s after the cases ('of matmul' uses "
        "the higher)")
  print()
  print("\n".join(table(rows + large, max(rate, rate_after))))
  if args.large:
    print()
    print("\n".join(sweep_table(sweep)))
    print()
    for title, report in buffers.items():
      print("\n".join(buffer_lines(f"XLA buffer assignment, {title}", report)))
    head = next(r for r in large if r["mode"] == "l1-fullrow")
    extra, rss = head["memory"]["extra"], head["rss_delta"]
    fits = [b for b, mem in sweep if mem["extra"] <= TARGET_BYTES]
    met = max(extra, rss) <= TARGET_BYTES
    print()
    print(f"2 GiB target, l1-fullrow {m}×{n} at block_size={DEFAULT_BLOCK}: "
          f"{extra / MiB:.0f} MiB (temp+out, memory analysis), "
          f"{rss / MiB:.0f} MiB (peak-RSS increase): "
          + ("met" if met else "NOT met")
          + f". Block sizes that fit: {fits}.")
  if args.json:
    args.json.write_text(json.dumps(dict(
        device=timing.device_name(), jax=jax.__version__,
        matmul_gflops=[rate / 1e9, rate_after / 1e9], amplitude=amplitude,
        rows=rows, large=large,
        sweep=[dict(block_size=b, memory=mem) for b, mem in sweep],
        buffers=buffers), indent=1, default=str))


if __name__ == "__main__":
  main()
