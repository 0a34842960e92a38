"""recaption: a long, detailed caption for every image (caption records per shard).

Backends (`recaption.backend`): `demo` (the demo world's caption teacher), `hf` (an
image-text-to-text model in process), `openai` (a VLM behind an OpenAI-compatible
endpoint). Built-in prompts are in prompts/.
"""
