"""`swiftplan serve`: render and run vLLM, or the built-in OpenAI-compatible server.

`vllm_cmd` renders the `vllm serve` command from a plan (pure) and runs it; the built-in path is
`loading` (model, tokenizer, adapters) → `engine` (one worker thread owning the model) → `app`
(the FastAPI routes) → `server` (uvicorn), with `report` comparing measurements to the plan.
Importing this package imports nothing heavy.
"""
