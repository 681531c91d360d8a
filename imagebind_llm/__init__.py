"""ImageBind-LLM: ImageBind and Point-Bind encoders, the bind network and gated LLaMA."""

__version__ = "0.1.0"
