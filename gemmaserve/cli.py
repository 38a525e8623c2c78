"""Command line: `gemmaserve generate | make-demo-model | quantize | serve` — parse args, build configs, run."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gemmaserve.config import add_engine_args
from gemmaserve.model.hub import ModelNotFoundError
from gemmaserve.types import EngineError, SamplingParams

DEMO_SIZES = ("tiny", "small", "bench", "26b-a4b")


def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text for one prompt, streaming to stdout")
    add_engine_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn with the chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--thinking", action="store_true", help="enable thinking (with --chat)")
    p.add_argument("--max-tokens", type=int, default=64)
    # None = the checkpoint's generation_config.json default (Gemma 4: 1.0 / 0.95 / 64), else neutral.
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--show-ids", action="store_true", help="print the generated token ids at the end")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image file (png/jpeg/webp/gif) placed before the prompt (repeatable)")
    p.add_argument("--video", action="append", default=[], metavar="PATH",
                   help="a video file (mp4/webm/mov/mpeg) placed before the prompt (repeatable)")
    p.add_argument("--max-soft-tokens", type=int, default=280, choices=[70, 140, 280, 560, 1120],
                   help="image budget in soft tokens")
    p.set_defaults(func=run_generate)


def add_make_demo_parser(subparsers) -> None:
    p = subparsers.add_parser("make-demo-model", help="write a random-weight checkpoint with the real layout")
    p.add_argument("dir")
    p.add_argument("--size", default="tiny", choices=DEMO_SIZES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-bytes", type=int, default=None,
                   help="split the weights into shards of at most this many bytes (with an index file)")
    p.set_defaults(func=run_make_demo)


def add_quantize_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize", help="write a 4-bit (compressed-tensors W4A16 pack-quantized) copy of a bf16 checkpoint")
    p.add_argument("src", help="checkpoint directory (safetensors)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--group-size", type=int, default=None, help="weights per scale (default: ops.int4.GROUP_SIZE)")
    p.set_defaults(func=run_quantize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemmaserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(sub)
    add_make_demo_parser(sub)
    add_quantize_parser(sub)
    try:  # the API teammate owns `serve`; the CLI still works where the API is not installed
        from gemmaserve.api.cli_serve import add_serve_parser
    except ImportError:
        pass
    else:
        add_serve_parser(sub)
    try:  # the cluster needs ray[serve]
        from gemmaserve.cluster.cli_cluster import add_cluster_parser
    except ImportError:
        pass
    else:
        add_cluster_parser(sub)
    return parser


def _load_media(args: argparse.Namespace) -> list:
    """--image / --video files as MediaInputs (images first, then videos, in the order given)."""
    from pathlib import Path

    from gemmaserve.media.image import load_image
    from gemmaserve.media.video import load_video

    return ([load_image(Path(p).read_bytes(), args.max_soft_tokens) for p in args.image]
            + [load_video(Path(p).read_bytes()) for p in args.video])


def _prompt_ids(engine, args: argparse.Namespace, media: list | None = None) -> list[int]:
    tok = engine.tokenizer
    media = media or []
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer.json")
    if args.chat:
        from gemmaserve.chat import ChatRenderer, PromptEncoder
        from gemmaserve.chat.render import resolved_media_part

        if not tok.chat_template:
            raise ValueError(f"{args.model} has no chat template")
        # Media first, then the text: the order the model card recommends.
        parts = [resolved_media_part(m.kind, m.prompt_text(), m) for m in media]
        content = parts + [{"type": "text", "text": args.prompt}] if parts else args.prompt
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": content}
        ]
        # The template writes <bos> itself; control-token strings in --prompt/--system stay text.
        return PromptEncoder(ChatRenderer(tok.chat_template), tok).encode(messages, enable_thinking=args.thinking).ids
    if media:
        from gemmaserve.engine.llm import expand_media_text

        placeholders = "".join(f"<|{m.kind}|>" for m in media)
        return tok.encode_prompt(expand_media_text(placeholders, media) + args.prompt)
    return tok.encode_prompt(args.prompt)


def run_generate(args: argparse.Namespace) -> int:
    from gemmaserve.config import engine_config_from_args
    from gemmaserve.engine.engine import Engine

    cfg = engine_config_from_args(args, max_num_seqs=1, warmup=False, adaptive_prefill=False)  # one request: no warm-up
    engine = Engine.from_config(cfg)
    defaults = getattr(engine.tokenizer, "generation_defaults", None) or {}

    def pick(value, key, neutral):
        return value if value is not None else defaults.get(key, neutral)

    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=float(pick(args.temperature, "temperature", 1.0)),
        top_p=float(pick(args.top_p, "top_p", 1.0)),
        top_k=int(pick(args.top_k, "top_k", 0)),
        min_p=args.min_p,
        seed=args.seed,
        stop=list(args.stop),
        ignore_eos=args.ignore_eos,
    )
    media = _load_media(args)
    engine.add_request("cli", _prompt_ids(engine, args, media), params, media or None)
    final = None
    while final is None:
        for out in engine.step():
            sys.stdout.write(out.new_text)
            sys.stdout.flush()
            if out.finished:
                final = out
    sys.stdout.write("\n")
    if args.show_ids:
        print(f"token_ids: {final.token_ids}")
    reason = final.finish_reason.value if final.finish_reason else None
    print(f"[finish_reason={reason} tokens={len(final.token_ids)}]", file=sys.stderr)
    if final.error:
        print(f"error: {final.error}", file=sys.stderr)
        return 1
    return 0


def run_make_demo(args: argparse.Namespace) -> int:
    from gemmaserve.demo import describe, write_demo_model

    if args.shard_bytes is not None and args.shard_bytes < 1:
        raise ValueError(f"--shard-bytes must be >= 1, got {args.shard_bytes}")
    path = write_demo_model(args.dir, size=args.size, seed=args.seed, shard_bytes=args.shard_bytes)
    # stdout is the path alone (scripts capture it); the human notes go to stderr.
    print(path)
    print(describe(args.size), file=sys.stderr)
    if args.size == "26b-a4b":
        print(f"no weights were written (the 26B-A4B shape is ~50 GB); serve it with random weights:\n"
              f"  gemmaserve serve --model {path} --dummy-weights", file=sys.stderr)
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from gemmaserve.model.ct_checkpoint import quantize_checkpoint
    from gemmaserve.ops.int4 import GROUP_SIZE

    group = args.group_size or GROUP_SIZE
    if group < 32 or group % 32:
        raise ValueError(f"--group-size must be a positive multiple of 32, got {group}")
    out = quantize_checkpoint(args.src, args.dst, group, progress=lambda line: print(line, file=sys.stderr))
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (EngineError, ModelNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
