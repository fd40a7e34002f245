"""Data for the experiments: the synthetic case study and offline real data sets."""
