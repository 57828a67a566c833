"""mm1: a workflow-managed reproduction of Apple's MM1 multimodal LLM pre-training study."""

from mm1 import jit_hook

__version__ = "0.1.0"

jit_hook.install()  # before anything imports megatron: no torch.compile wrappers on CPU
