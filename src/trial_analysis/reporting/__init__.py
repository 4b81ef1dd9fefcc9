"""Reporting: what people read.

``tables`` (CSV tables from estimates), ``figures`` (PNG and SVG figures), ``report`` (the
self-contained HTML report from ``templates/``). Reads the estimate files the earlier stages
write.
"""
