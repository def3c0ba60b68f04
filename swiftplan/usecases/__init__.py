"""Use cases: one function per verb, shared by every view (CLI, dashboard).

A view parses its input into a request, calls one use case and renders the outcome; the use case
resolves the model and the hardware (the impure edges, through `executors`), runs the planner and
returns typed results, ending in a `Plan`. Views never re-implement these steps and never import
each other; shared wording lives in `describe`.
"""
