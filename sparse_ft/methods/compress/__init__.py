"""Compressors of a finished run (`job=compress`): ERE, BITQ, LRA. They read the base weights θ and
the fine-tuned θ', write a compressed artifact and hand back the reconstruction that the shared
evaluator scores."""
