"""The train executor: carry out a training plan with transformers, peft, bitsandbytes and DeepSpeed.

`prepare` (parent: check, render, launch) → `worker` (one per process: `loop` over an `engine`) →
`report` (predicted vs measured). `data`/`tokens` read the data file, `model` loads exactly what the
plan says, `launch` renders the command and config files, `run_dir` keeps checkpoints, `export` merges.
Heavy imports (torch, transformers, peft) happen inside functions only.
"""
