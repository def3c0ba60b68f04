"""`swiftplan dash`, the Textual dashboard: probe or pick hardware, fill a job form, watch the search,
choose and save a plan, follow a training run against it.

Layers: `hardware`, `job`, `search`, `plans`, `runs` and `plot` build view data without Textual;
`workers` runs them off the UI thread and posts `messages`; `app` routes messages to the `panes`,
which draw with the `widgets`; `screens` are the two dialogs. `app.make_app` builds the app.
"""
