"""gemmaserve: an OpenRouter-compatible inference server and engine for Google's Gemma 4."""

from gemmaserve.types import FinishReason, MediaInput, MultimodalPrompt, RequestOutput, SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "FinishReason", "MediaInput", "MultimodalPrompt"]


def __getattr__(name: str):
    # LLM pulls in torch and the engine; load it lazily so `import gemmaserve` stays light.
    if name == "LLM":
        from gemmaserve.engine.llm import LLM

        return LLM
    raise AttributeError(name)
