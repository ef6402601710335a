"""The ``ttc`` stage: test-time-compute scaling of this pipeline's checkpoints. The sample table, estimators
and curves it scores with are ``thinkflow.scaling`` (shared with ``compare``); here: the learned verifier,
oracle-PRM search, the compute-optimal allocation, plots and the stage itself."""
