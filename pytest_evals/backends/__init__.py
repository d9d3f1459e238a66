"""Backends: what answers a model call. ``base`` holds the batch-first protocol and what a backend
declares, ``specs`` parses ``--model`` specs, ``registry`` maps spec prefixes to backend classes; ``hf*``
(transformers), ``openai*`` (any OpenAI-compatible server) and ``vllm`` each import their library lazily.
Nothing here knows pytest, the store or the run."""
