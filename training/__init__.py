"""Build the bundled tiny arithmetic reasoning model (thinkgate-arith) from nothing, on CPU.

Modules: ``problems`` (problem sampling, prompts, step-by-step traces), ``render`` (problem images),
``tokenizer`` (BPE tokenizer and chat template), ``modelcfg`` (the Idefics3 architecture and the
checkpoint's config files), ``train`` (the training loop), ``build`` (``make model``) and ``evaluate``
(``make eval``: held-out problems through the gateway).
"""
