"""Cohort: who is analysed, and in which arm.

``eligibility`` (the study's eligibility rules, the flow counts from the ledger) and
``allocate`` (arms, primary therapist, implementation outcomes, the analysis table). Uses
ingest's output files and the top-level helpers.
"""
