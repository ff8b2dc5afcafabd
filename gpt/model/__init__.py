"""The GPT: the decoder, its KV cache, generation, Hugging Face conversion."""
