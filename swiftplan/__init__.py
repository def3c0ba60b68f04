"""swiftplan: a hardware-aware planner for fine-tuning and serving large language models."""

__version__ = "0.1.0"
