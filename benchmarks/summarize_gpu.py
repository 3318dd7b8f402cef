"""The one summary table of benchmarks/gpu.sh, against the issue's targets.

Reads what the script's steps wrote (each may be missing: a step that failed
or ran out of time shows as such) and prints one short table:

- the correctness pass (pytest's last line);
- the optimizer step, Bort-AdamW / ``optax.adamw``, on the ResNet-50, DeiT-S
  and ViT-B/16 parameter sets: targets ≤ 1.3 (``l2-full``) and ≤ 1.6
  (``l1-fullrow`` "ada");
- the optimizer step's A/A control (``optax.adamw`` timed twice): the noise
  of the ratios above;
- the whole training step, per model and base: the recommended default's
  added time and the cheapest other configuration's, each beside its
  arithmetic floor: target ≤ 10 % added time on ResNet-18 and the ViT;
- the trained models of ``gpu_train.py`` (accuracy and time ratio), if run.

Reference (issue "Performance and scale", one H200, one run): the published
PyTorch Bort-AdamW step takes 14.8 / 14.2 / 22.6 ms on ResNet-50 / DeiT-S /
ViT-B/16. Compare only on the same card kind.

    python benchmarks/summarize_gpu.py --tests tests.txt \\
      --step-overhead step_overhead.json --train-step train_step.json \\
      --gpu-train gpu_train.json
    python benchmarks/summarize_gpu.py step_overhead.json   # that one only
"""

import argparse
import json
import os

PYTORCH_H200_MS = {"resnet50": 14.8, "deit_s": 14.2, "vit_b16": 22.6}
#: Bort-AdamW / optax.adamw optimizer-step targets, by configuration.
TARGETS = {"l2-full c=1": 1.3, "l1-fullrow ada": 1.6,
           "l1-fullrow ada bf16-gram": 1.3, "l2-full c=1 bf16-gram": 1.3,
           "l2-row c=1": 1.2}
#: Whole-step target: Bort's added time, by model.
WHOLE_STEP_TARGETS = {"resnet18": 0.10, "vit": 0.10}


def _load(path):
  """The JSON at ``path``, or the reason it is not there."""
  if not path:
    return None, "not run"
  if not os.path.exists(path):
    return None, "no output (failed or timed out; see its log)"
  try:
    with open(path) as f:
      return json.load(f), ""
  except ValueError as e:
    return None, f"unreadable output ({e})"


def _met(value, target):
  return f"≤{target:g} {'met' if value <= target else 'MISSED'}"


def rows(args) -> list[tuple[str, str, str, str]]:
  """The table's rows: (what, where, measured, target)."""
  out = []
  if args.tests is not None:
    text = ""
    if os.path.exists(args.tests):
      with open(args.tests) as f:
        lines = [line.strip() for line in f if line.strip()]
      text = lines[-1] if lines else ""
    ok = text and "passed" in text and not any(
        word in text for word in ("failed", "error"))
    out.append(("correctness", "tests/core subset", text or "no output",
                "all pass " + ("met" if ok else "MISSED")))

  results, why = _load(args.step_overhead)
  if results is None:
    if args.step_overhead:
      out.append(("optimizer step", "step_overhead.py", why, ""))
  else:
    for r in results["rows"]:
      if r["config"] not in ("l2-full c=1", "l1-fullrow ada", "l2-row c=1"):
        continue
      pytorch = PYTORCH_H200_MS.get(r["set"])
      note = "" if pytorch is None else (
          f" ({r['bort_ms']:.1f} ms; PyTorch H200 {pytorch} ms)")
      out.append(("optimizer step", f"{r['set']} {r['config']}",
                  f"{r['ratio']:.2f}x{note}",
                  _met(r["ratio"], TARGETS[r["config"]])))
    controls = [r["aa_ratio"] for r in results["rows"] if "aa_ratio" in r]
    if controls:
      out.append(("optimizer step", "A/A control (adamw / adamw)",
                  f"{min(controls):.2f}–{max(controls):.2f}x", "≈1 (noise)"))

  results, why = _load(args.train_step)
  if results is None:
    if args.train_step:
      out.append(("whole step", "train_step.py", why, ""))
  else:
    by_model = {}
    for r in results["rows"]:
      by_model.setdefault((r["model"], r["optimizer"]), []).append(r)
    for (model, base), model_rows in by_model.items():
      target = WHOLE_STEP_TARGETS.get(model)
      default = [r for r in model_rows
                 if r["config"].startswith("recommended =")]
      others = [r for r in model_rows if r not in default]
      picks = default[:1] + ([min(others, key=lambda r: r["added"])]
                             if others else [])
      for r in picks:
        what = "default" if r in default else "cheapest other"
        floor = r.get("floor_added")
        out.append((
            "whole step", f"{model} {base}, {what}: {r['config']}",
            f"{r['added']:+.0%} ({r['bort_ms']:.2f} vs {r['base_ms']:.2f} ms)"
            + ("" if floor is None else f"; floor {floor:+.0%}"),
            "" if target is None else
            f"≤+{target:.0%} {'met' if r['added'] <= target else 'MISSED'}"))
    for model in results.get("skipped", []):
      out.append(("whole step", model, "skipped (not in the model table)", ""))

  results, why = _load(args.gpu_train)
  if results is None:
    if args.gpu_train:
      out.append(("trained", "gpu_train.py", why, ""))
  else:
    for r in results["rows"]:
      out.append((
          "trained", f"{r['model']} {r['optimizer']} ({r['steps']} steps)",
          f"acc {100 * r['test_accuracy']:.2f}%, "
          f"{r['step_time_ratio']:.2f}x time, "
          f"constraint {r['constraint_error']:.3g}", ""))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("step_overhead_json", nargs="?", default=None)
  parser.add_argument("--tests", default=None,
                      help="a file whose last line is pytest's summary")
  parser.add_argument("--step-overhead", default=None)
  parser.add_argument("--train-step", default=None)
  parser.add_argument("--gpu-train", default=None)
  parser.add_argument("--device", default=None, help="shown in the title")
  args = parser.parse_args(argv)
  args.step_overhead = args.step_overhead or args.step_overhead_json
  table = rows(args)
  device = args.device
  for path in (args.step_overhead, args.train_step):
    results, _ = _load(path)
    if device is None and results is not None:
      device = results.get("device")
  print(f"Summary on {device or 'an unknown device'}:")
  print("| check | what | measured | target |")
  print("|---|---|---|---|")
  for row in table:
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
  main()
