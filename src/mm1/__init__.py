"""mm1: a workflow-managed reproduction of Apple's MM1 multimodal LLM pre-training study."""

__version__ = "0.1.0"
