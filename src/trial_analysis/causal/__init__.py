"""Causal: the sensitivity analyses of the observational comparison.

``sensitivity`` dispatches the analyses; ``propensity`` (weights and balance), ``imputation``
(multiple imputation and tipping point) and ``evalues`` implement them; ``common`` holds what
they share (effect extraction, ANCOVA designs, pooled estimates), below all of them, so no
module here imports another in a circle. Uses the models stage, never the reverse.
"""
