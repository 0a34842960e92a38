"""Language-model backends: an OpenAI-compatible chat client, a local Hugging Face causal
LM, the caption backend and the negatives generator built on them.

Both chat engines (`endpoint.ChatEndpoint`, `hf_causal.CausalLMChat`) answer a batch of
conversations with one `ChatReply` each (a text, or a reason code and detail), count
their work in a `Throughput`, and raise `EndpointDown` when the model cannot be reached
at all, so the stage stops (and resumes on rerun) instead of rejecting every sample.
Nothing here is imported until a stage picks one of these backends.
"""
