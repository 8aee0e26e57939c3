#!/usr/bin/env bash
# The GPU reproduction: the same five papers with the paper models (BERT-large, BERT-base,
# RoBERTa-large, T5-base/large, ResNet-34 on CIFAR-10), at each paper sweep's "first look" size,
# then the same reproduction report. Needs the Hugging Face hub (or a local cache) and GLUE/CIFAR-10.
#   bash sweeps/reproduce_gpu.sh [OUT]     (OUT defaults to outputs/reproduce_gpu)
#   add hydra/launcher=slurm through EXTRA="hydra/launcher=slurm hydra.launcher.partition=<p>" on a cluster
# GPU cost (A100-hours, from each sweep file's header; one GPU per job unless said):
#   FISH Table 1, seed 1 (40 runs)                 ~20     fish_glue_table1
#   FISH on CIFAR-10, ResNet-34 (24 runs)          ~12     fish_checkpointing_table2
#   PST, one lr per method (48 runs)               ~25     pst_glue
#   Essential sparsity, seed 1 (50 runs)           ~10     essential_sparsity
#   READ Table 1, 3 epochs, seed 1 (42 runs)       ~15     read_glue_table1
#   READ memory/energy on T5-base shapes (5 runs)   <0.5   reproduce_cpu_memory on CUDA (one process per job)
#   RoBERTa-large dense on GLUE (8 runs) + ERE     ~10 + ~3 ere_glue (20 compress jobs per run)
#   ES Fig 3/6, ViT-B & DINO-B, 5 sparsities (30)  ~7      essential_vision (estimate)
#   ES on SQuAD v1.1, bert-base (10 runs)          ~7      essential_squad (estimate)
#   PST Table 3, GPT-2 medium at 90% (9 runs)      ~12     pst_nlg (estimate)
#   total                                          ~121 A100-hours
# The ViT/SQuAD/GPT-2 sweeps read CIFAR-10/100 under $SPARSE_FT_DATA (task.root), Tiny-ImageNet and
# SQuAD through datasets (zh-plus/tiny-imagenet, rajpurkar/squad; or task.data_dir=<official folder>
# via EXTRA) and the official E2E/DART/WebNLG files under $SPARSE_FT_DATA/{e2e,dart,webnlg}.
set -euo pipefail
OUT=${1:-outputs/reproduce_gpu}
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}
GLUE=${GLUE_DIR:-}              # empty: GLUE from the hub (datasets)
data=(); [[ -n "$GLUE" ]] && data=(task.data_dir="$GLUE")
source "$(dirname "$0")/sweep_lib.sh"

sweep fish        +sweep=fish_glue_table1 seed=1 "${data[@]}"
sweep fish_cifar  +sweep=fish_checkpointing_table2
sweep pst         +sweep=pst_glue trainer.lr=1e-4 epochs_choice=short "${data[@]}"
sweep essential   +sweep=essential_sparsity seed=1 "${data[@]}"
sweep read        +sweep=read_glue_table1 seed=1 lr_choice=e3 trainer.epochs=3 "${data[@]}"
sweep_each memory +sweep=reproduce_cpu_memory model=t5_base model.random_init=true trainer.device=cuda "${data[@]}"
sweep dense_large model=roberta_large method=dense task=cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte "${data[@]}"
for run in "$OUT"/dense_large/[0-9]*; do
  [[ -d "$run" ]] && sweep "ere_$(basename "$run")" +sweep=ere_glue source="$run"
done

sweep essential_vision +sweep=essential_vision model=vit_base,dino_base method.sparsity=0.0,0.2,0.4,0.6,0.8
sweep essential_squad  +sweep=essential_squad
sweep pst_nlg          +sweep=pst_nlg method.sparsity=0.9

if [[ -z "$ONLY" ]]; then "$PY" -m sparse_ft.report "$OUT" --reproduce --out docs/reproduction_gpu; fi
