"""Small data helpers of the library: the synthetic case study and the German credit CSV.

The real data sets of the experiments (Adult, COMPAS, BUG) are loaded by the
experiments package (``fairsteer_experiments.data``).
"""
