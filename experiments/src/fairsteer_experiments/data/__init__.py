"""Real data of the experiments: Adult and COMPAS (:mod:`.tabular`), BUG (:mod:`.bug`).

The synthetic case study stays in the library (:mod:`fairsteer.data.synthetic`).
"""
