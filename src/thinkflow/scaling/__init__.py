"""Test-time scaling measurements shared by ``ttc`` and ``compare``: one stored table of samples
per problem (``table``), unbiased accuracy-at-k estimators with bootstrap CIs (``estimators``), every
parallel strategy's accuracy-vs-k curve with its compute (``curves``), and thinking-budget points
(``sequential``). Both stages score their samples with these, so their numbers are comparable."""
