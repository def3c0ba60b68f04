"""Executors: what runs a plan (training, serving, probes) and the fake-tensor tracer."""

import logging

# torchao (in the trace extra; peft imports it when installed) logs a warning at import for each CUDA-only
# kernel library it cannot load on a CPU machine, and torch one for each of its enum registrations: neither
# concerns a plan, and both would precede every `swiftplan verify` table.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
