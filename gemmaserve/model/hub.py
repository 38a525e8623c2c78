"""Resolves --model to a checkpoint directory: a local path, or a Hugging Face hub id downloaded once."""

from __future__ import annotations

from pathlib import Path

from gemmaserve.config import hub_offline

# What the server reads from a repository: config, weights, tokenizer, chat template. The vision
# processor configs are small and let a future vision front end work from the same snapshot.
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
]


class ModelNotFoundError(Exception):
    """--model names neither a checkpoint directory nor a reachable hub repository. The message
    is one line, meant to be printed as is (no traceback)."""


def _offline() -> bool:
    return hub_offline()


def _looks_like_path(model: str) -> bool:
    # A hub id is "name" or "org/name"; anything with more slashes, a leading "/", ".", "~" or a
    # Windows drive is meant as a filesystem path.
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or (len(model) > 1 and model[1] == ":")


def resolve_model_path(model: str, revision: str | None = None) -> Path:
    """A local checkpoint directory as is; otherwise download `model` (a hub id) with
    huggingface_hub, or find it in the hub cache when offline. Raises ModelNotFoundError."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"{model}: directory has no config.json, so it is not a model checkpoint")
        return local
    if local.exists() or _looks_like_path(model):
        raise ModelNotFoundError(f"{model}: no such model directory")
    return _download(model, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import enable_progress_bars
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelNotFoundError(f"{repo_id}: not a local directory, and huggingface_hub is not installed") from exc
    from huggingface_hub import errors

    offline = _offline()
    if not offline:
        enable_progress_bars()  # a 50 GB download should show its progress
    try:
        path = snapshot_download(
            repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS, local_files_only=offline
        )
    except errors.LocalEntryNotFoundError as exc:
        if offline:
            raise ModelNotFoundError(
                f"{repo_id}: not a local directory, HF_HUB_OFFLINE is set and it is not in the hub cache"
            ) from None
        raise ModelNotFoundError(
            f"{repo_id}: not a local directory and the Hugging Face hub cannot be reached "
            f"(no network?); download it elsewhere and pass its directory ({_one_line(exc)})"
        ) from None
    except errors.GatedRepoError:
        raise ModelNotFoundError(
            f"{repo_id}: gated repository; accept its license on huggingface.co and set HF_TOKEN"
        ) from None
    except errors.RepositoryNotFoundError:
        raise ModelNotFoundError(f"{repo_id}: no such repository on the Hugging Face hub (or no access)") from None
    except errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"{repo_id}: revision {revision!r} not found") from None
    except (errors.HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{repo_id}: download failed: {_one_line(exc)}") from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{repo_id}: the downloaded snapshot has no config.json")
    return path


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
