"""The stages of the pipeline and the cache they live in.

One module per stage kind (corpus, tokenizer, encode, pretrain, finetune, evaluate, report), each a
`StageDef` (tasks/definition.py) listed in tasks/stages.py; around them the cache: keys and stage
directories (stage.py), content digests (content.py), locks, the runner that runs one stage as a
Prefect task, garbage collection and the durable store; and the MLflow side (tracking, registry).
"""
