"""Generic language-model engines: an OpenAI-compatible chat client, a local Hugging Face
causal LM and robust reply reading. The recaption and negatives backends build on them.

Both chat engines (`endpoint.ChatEndpoint`, `hf_causal.CausalLMChat`) answer a batch of
conversations with one `ChatReply` each (a text, or a reason code and detail), count
their work in a `Throughput`, and raise `EndpointDown` when the model cannot be reached
at all, so the stage stops (and resumes on rerun) instead of rejecting every sample.
Nothing here is imported until a stage picks a backend that needs it.
"""
