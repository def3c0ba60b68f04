"""`swiftplan size`: which hardware to rent or buy for a job, and what it costs (pure).

`prices` holds what each accelerator costs (catalog prices with their date and source, user
overrides), `candidates` lists the clusters worth planning and prunes those that cannot hold the
weights, `best_plan` finds the fastest training plan on one cluster, `train_sizing` and `serve_sizing`
turn a job into one option per cluster (or per accelerator, for serving), and `rank` orders the
options by the objective under the constraints and explains the choice.
"""
