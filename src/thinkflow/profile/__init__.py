"""The compute-spend profile: per-stage ledgers of FLOPs, bytes, tokens and seconds (``ledger``), the
machine's measured ceilings (``probe``), measured roofline points of the final model (``kernels``), and
the report on the pipeline's parent run (``report``, wired by ``pipeline.pipeline_profile``).

This ``__init__`` imports nothing: ``ledger`` sits below the inference engines (they record into it),
while ``kernels`` and ``pipeline`` sit above them (they run an engine), so the package is not one layer
(see docs/architecture.md, "Layers")."""
