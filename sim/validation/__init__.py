"""Validation against published experiments: ``pce-sim report-card``.

Each experiment is a pair of YAML files in ``configs/validation/``: ``<name>.yaml`` (the scenario
base, the groups to run, the analogue's assumptions) and ``<name>.reference.yaml`` (the published
numbers, each with value, sd, n, units, what was measured and the full citation, and the checks
that turn model and data into a verdict). One job per module:

- :mod:`sim.validation.references`: read and check both files (one-line ConfigErrors naming the
  file and the field);
- :mod:`sim.validation.experiments`: one runner per experiment kind (leakage, intravertebral
  pressure, syringe pressure, cannula), returning the model's quantities in SI;
- :mod:`sim.validation.verdicts`: the acceptance rules (ratio with propagated SDs, range, overlap
  of distributions, band containing a value, ratio within a factor, direction);
- :mod:`sim.validation.figures`: one matplotlib figure per experiment, model next to the data;
- :mod:`sim.validation.report_card`: run the suite, write ``report_card.md``, ``report_card.json``
  and the figures into a claimed output folder.

``docs/validation.md`` describes every experiment, its analogue and acceptance rule.
"""
