"""LLM negatives backends: the batched / concurrent path against a one-at-a-time loop.

Both variants send the same negatives prompts for the same demo-world expressions to the
same engine on the same device or server, one after the other; read the ratio, not the
absolute numbers.

hf      one `generate` over `--batch` expressions at a time (left padding) vs one
        `generate` per expression. `--model` is a local folder or a hub id (with
        `--gguf-file` for GGUF checkpoints); `--model tiny` builds a random 2-layer Llama.
openai  `--concurrency` requests in flight vs one at a time, against `--base-url`
        (e.g. a llama.cpp server: python -m llama_cpp.server --model M.gguf --port 8080).

Output: one JSON line per variant (expressions/s, generated tokens/s), then a ratio line.

    python benchmarks/llm_backends.py hf --model tiny --expressions 16 --batch 8
    python benchmarks/llm_backends.py hf --model DIR --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \
        --expressions 16 --batch 8
    python benchmarks/llm_backends.py openai --base-url http://127.0.0.1:8080/v1 --model M.gguf \
        --expressions 16 --concurrency 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "components")]  # fgclip from this checkout; tests' model builders

from fgclip.core.prompts import load_prompt  # noqa: E402
from fgclip.core.throughput import Throughput  # noqa: E402
from fgclip.data.negatives.interface import PROMPT_PACKAGE  # noqa: E402
from fgclip.llm.chat import ChatEngine  # noqa: E402
from fgclip.llm.config import CausalLMConfig, EndpointConfig  # noqa: E402
from tests.support.llm_models import build_tiny_causal_lm, demo_expressions  # noqa: E402

COUNT = 10


def conversations(expressions: list[str]) -> list[list[dict[str, str]]]:
    from fgclip.text.words import head_noun

    prompt = load_prompt("negatives.v1", PROMPT_PACKAGE)
    return [
        [{"role": "user", "content": prompt.render(expression=e, count=str(COUNT), noun=head_noun(e) or e)}]
        for e in expressions
    ]


def run(engine: ChatEngine, prompts: list, group: int, variant: str) -> dict[str, object]:
    engine.throughput = Throughput("expressions")  # a fresh meter per variant
    ok = 0
    for start in range(0, len(prompts), group):
        ok += sum(reply.ok for reply in engine.chat(prompts[start : start + group]))
    metrics = engine.throughput.metrics("m")
    return {
        "variant": variant,
        "group": group,
        "expressions": len(prompts),
        "answered": ok,
        "seconds": metrics["m.seconds"],
        "expressions_per_s": metrics["m.expressions_per_second"],
        "tokens_per_s": metrics["m.tokens_per_second"],
        "tokens": metrics["m.tokens"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=["hf", "openai"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--expressions", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="hf: expressions per generate")
    parser.add_argument("--concurrency", type=int, default=4, help="openai: requests in flight")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    prompts = conversations(demo_expressions(args.expressions))
    with tempfile.TemporaryDirectory() as scratch:
        if args.engine == "hf":
            from fgclip.llm.hf_causal import CausalLMChat

            model = str(build_tiny_causal_lm(Path(scratch))) if args.model == "tiny" else args.model
            engine: ChatEngine = CausalLMChat(
                CausalLMConfig(
                    model=model, gguf_file=args.gguf_file, device=args.device, max_new_tokens=args.max_tokens
                )
            )
            engine.chat(prompts[:1])  # warm-up: first-call allocations are not the path being compared
            batched, single = run(engine, prompts, args.batch, "batched"), run(engine, prompts, 1, "one_at_a_time")
            device = str(getattr(engine, "device", ""))
        else:
            from fgclip.llm.endpoint import ChatEndpoint

            config = EndpointConfig(
                base_url=args.base_url,
                model=args.model,
                api_key_env=None,
                concurrency=args.concurrency,
                max_tokens=args.max_tokens,
            )
            engine = ChatEndpoint(config)
            engine.chat(prompts[:1])
            batched = run(engine, prompts, args.concurrency, "concurrent")
            single = run(engine, prompts, 1, "one_at_a_time")
            device = args.base_url
        engine.close()
    for line in (batched, single):
        print(json.dumps({**line, "engine": args.engine, "device": device}))
    ratio = lambda key: round(batched[key] / single[key], 2) if single[key] else None  # noqa: E731
    print(
        json.dumps(
            {
                "variant": "ratio",
                "of": f"{batched['variant']}/one_at_a_time",
                "expressions_per_s": ratio("expressions_per_s"),
                "tokens_per_s": ratio("tokens_per_s"),
            }
        )
    )


if __name__ == "__main__":
    main()
