#!/usr/bin/env bash
# The reference model's identity figure on one GPU (docs/reproduction.md), as one time-boxed script for a GPU
# machine lent for ~10 minutes:
#
#   bash analyses/gpu_reference_figure.sh OUT_DIR [BUDGET_S]
#
# 1. benchmarks/bench_graph_step.py: the figure's stack (45 reference models), eager vs CUDA-graph steps,
#    and graphed vs eager weights on a tiny run.
# 2. analyses/inductive_bias.py figure --variant reference: the authors' architecture at the paper's 9 listed
#    sizes x 5 seeds, the authors' recipe to 4000 epochs (a model stops early once it predicts all 500
#    held-out sequences), one stack, CUDA-graph steps, until done or the budget runs out (histories stream).
# 3. analyses/inductive_bias.py summarise: table.txt + summary.json.
# TOY=1 runs every step at smoke-test size on the CPU.
set -uo pipefail
OUT=${1:?usage: gpu_reference_figure.sh OUT_DIR [BUDGET_S]}
BUDGET=${2:-560}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
mkdir -p "$OUT"
if [ "${TOY:-0}" = 1 ]; then
  DEV=cpu; BENCH=(--quick); FIG=(--preset small --epochs 2 --sizes 50 100 --seeds 0 1)
else
  DEV=cuda; BENCH=(--steps 100); FIG=()
fi
echo "== bench_graph_step ($(left) s left)"
timeout 120 "$PY" benchmarks/bench_graph_step.py --device "$DEV" "${BENCH[@]}" --json "$OUT/bench_graph_step.json"
echo "== reference figure ($(left) s left)"
"$PY" analyses/inductive_bias.py figure --variant reference --full --workers 1 --device "$DEV" \
  --deadline-s $(( $(left) - 15 )) --force --out "$OUT/figure" "${FIG[@]}"
"$PY" analyses/inductive_bias.py summarise "$OUT/figure"
echo "== done ($(left) s left)"
