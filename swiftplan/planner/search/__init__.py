"""`swiftplan fit`: search the space of training and serving plans for the best one that fits (pure).

`space` builds the choices, `candidate` maps a point to a set-up, `evaluate` estimates it, `optimize`
runs the Optuna study, `infeasible` explains what would fit when nothing does.
"""
