"""The experiments of fairsteer, outside the core library.

Thin scripts over fairsteer's public API, registered as commands of the
``fairsteer`` CLI through the entry-point group ``fairsteer.commands``
(:func:`fairsteer_experiments.cli.add_parser`):

- ``fairsteer demo`` (:mod:`.demo`): the synthetic bias-in-bias-out case study;
- ``fairsteer experiment adult|compas`` (:mod:`.tabular`): real tabular data;
- ``fairsteer experiment bug`` (:mod:`.bug`): MiniLM / SmolLM2 representations;
- ``fairsteer experiment generation`` (:mod:`.generation`): steered generation.

They share one protocol (:mod:`.protocol`: fit the two EF solvers, the
baselines, mean and std over seeds); data loaders are in :mod:`.data`, the
packaged language models in :mod:`.models`. From a source checkout without
installing: ``PYTHONPATH=src:experiments/src FAIRSTEER_PLUGINS=fairsteer_experiments.cli
fairsteer demo`` (``python -m fairsteer`` likewise).
"""
