"""`swiftplan fit`: search the space of training and serving plans for the best one that fits (pure).

`pins` (what the user and the GPU allow) and `space` / `serve_space` build the choices, `candidate` maps a
point to a set-up, `evaluate` estimates it (choosing micro-batch and memory-only variants), `params` and
`seeds` map points to Optuna parameters and starting trials, `study` runs the Optuna study, `optimize`
summarises it, and `infeasible` explains what would fit when nothing does.
"""
