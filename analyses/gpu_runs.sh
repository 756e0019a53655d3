#!/usr/bin/env bash
# The GPU runs behind docs/reproduction.md (inductive-bias study, identity figure) and docs/performance.md
# (the whole paper figure as one batched computation, extrapolated from a measured slice), as one
# time-boxed script for a GPU machine lent for ~10 minutes:
#
#   bash analyses/gpu_runs.sh OUT_DIR [BUDGET_S]
#
# 1. benchmarks/bench_figure_gpu.py: 220 paper-preset models in one stack, a measured slice, extrapolated.
# 2. analyses/inductive_bias.py study: every variant at N = 400, 600 x 3 seeds, 400 epochs of the authors'
#    schedule, all stacks at once.
# 3. analyses/inductive_bias.py choose: the HookedTransformer variant closest to the authors' histories.
# 4. analyses/inductive_bias.py figure: that variant at the paper's 9 listed sizes x 5 seeds (authors'
#    recipe, early stop at held-out 1.0) plus N = 400, 600 (seed 0) to the end of the 4000 epochs, until
#    the budget runs out (histories are streamed, so a stopped run still reports the epoch it reached).
# TOY=1 runs every step at smoke-test size on the CPU (tests/analyses/test_inductive_bias.py).
set -uo pipefail
OUT=${1:?usage: gpu_runs.sh OUT_DIR [BUDGET_S]}
BUDGET=${2:-560}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
mkdir -p "$OUT"
if [ "${TOY:-0}" = 1 ]; then
  DEV=cpu; BENCH=(--quick); STUDY=(--preset small --epochs 1 --sizes 400 600 --seeds 0 --workers 2
    --variants paper torch_init reference); FIG=(--preset small --epochs 2 --sizes 60 100 --seeds 0 1 --full 60)
else
  DEV=cuda; BENCH=(--steps 104); STUDY=(); FIG=()
fi
echo "== bench_figure_gpu ($(left) s left)"
timeout 150 "$PY" benchmarks/bench_figure_gpu.py --device "$DEV" "${BENCH[@]}" --json "$OUT/bench_figure_gpu.json"
echo "== study ($(left) s left)"
"$PY" analyses/inductive_bias.py study --device "$DEV" --deadline-s 150 --force --out "$OUT/study" "${STUDY[@]}"
VARIANT=$("$PY" analyses/inductive_bias.py choose "$OUT/study" | tail -1)
echo "== figure of $VARIANT ($(left) s left)"
"$PY" analyses/inductive_bias.py figure --variant "$VARIANT" --device "$DEV" --deadline-s $(( $(left) - 20 )) \
  --force --out "$OUT/figure" "${FIG[@]}"
echo "== done ($(left) s left)"
