"""Pretraining data: sources, corpus cleaning, the tokenizer, token shards, LM windows."""
