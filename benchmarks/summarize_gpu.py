"""The summary table of benchmarks/gpu.sh: step ratios against issue targets.

Reference (issue "Performance and scale", one H200, one run): the published
PyTorch Bort-AdamW step takes 14.8 / 14.2 / 22.6 ms on ResNet-50 / DeiT-S /
ViT-B/16. Compare only on the same card kind.
"""

import json
import sys

PYTORCH_H200_MS = {"resnet50": 14.8, "deit_s": 14.2, "vit_b16": 22.6}
TARGETS = {"l2-full c=1": 1.3, "l1-fullrow ada": 1.6,
           "l1-fullrow ada bf16-gram": 1.3, "l2-full c=1 bf16-gram": 1.3,
           "l2-row c=1": 1.2}


def main(path):
  results = json.load(open(path))
  print(f"device {results['device']}, f32 matmul "
        f"{results['matmul_gflops'] / 1e3:.0f} TFLOP/s")
  print("| set | config | bort/adamw | target | added / FLOP floor | "
        "published PyTorch / ours |")
  print("|---|---|---|---|---|---|")
  for r in results["rows"]:
    target = TARGETS.get(r["config"])
    met = "" if target is None else (
        f"≤{target} {'met' if r['ratio'] <= target else 'MISSED'}")
    speedup = PYTORCH_H200_MS[r["set"]] / r["bort_ms"]
    print(f"| {r['set']} | {r['config']} | {r['ratio']:.2f} | {met} | "
          f"{r['added_vs_floor']:.1f} | {speedup:.1f}x |")


if __name__ == "__main__":
  main(sys.argv[1])
