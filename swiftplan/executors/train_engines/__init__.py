"""External training engines: each a pure renderer from a `Plan` to argv, environment and config files.

`common` holds the run options that are not in the plan and the pieces every HF-Trainer-based engine
shares (optimizer names, precision, a DeepSpeed JSON); `ms_swift`, `megatron_swift`, `llamafactory`, `trl`
and `axolotl` render their framework's own command and config; `objectives` holds what a preference,
reward or RL plan adds (data format, beta, the reference, where rollouts run) and `ms_swift_rlhf`,
`trl_objectives` and `axolotl_rl` spell it for their engine; `slurm` wraps any of them in an sbatch
script; `report` reads a finished run's logs into run_report.json. None
imports its framework: tests feed the output to each framework's own parser in its own venv
(scripts/engine_envs.sh, pytest -m engines).
"""
