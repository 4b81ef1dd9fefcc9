"""Simulation: data whose truth is known.

``simulate`` (the default study's simulated extract, in named stages) and
``simulation_study`` (replicate datasets through the real pipeline steps, chunked for
Snakemake and SLURM).
"""
