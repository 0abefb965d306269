"""``pixcon study``: the label-efficiency experiment (fractions x seeds x methods) on any dataset,
with learning rates tuned on validation, resumable, on one machine or a cluster.

:mod:`pixcon.study.spec` (no torch) describes a study, :mod:`pixcon.study.run` runs it,
:mod:`pixcon.study.cell` one of its runs, :mod:`pixcon.study.executors` where runs train.
"""
