"""qc: sampled validation of the built regions and negatives, a noise estimate with a
confidence interval, a gate, and an HTML review gallery.

The QC unit is a *region item*: one region of one sample (its box, short and long
expression, hard negatives) together with the image's long caption. The population is
every region item of every shard.

Design (recorded in report.json):
- Stratified random sample, strata = shards. Allocation proportional to each shard's
  item count, rounded by largest remainder so the allocations sum exactly to the sample
  size; a simple random sample without replacement inside each shard, seeded from
  (qc.seed, shard) so the sample does not depend on processing order.
- With proportional allocation every item has the same inclusion probability n/N (the
  design is self-weighting), so the pooled sample proportion is the unbiased estimator of
  the population noise rate; no stratum weights are needed.
- The interval is the Wilson score interval at qc.confidence. It ignores two effects that
  both make it narrower in truth: stratification (proportional allocation never has a
  larger variance than simple random sampling) and the finite population (sampling
  without replacement). So it is conservative, which is the safe side for a gate.
- An item is noisy when an automatic validator fails or the reviewer says it is wrong.
  With the `labels` reviewer only items with a human verdict enter the estimate.
- Gate: fail when the upper bound exceeds qc.max_noise_upper. The CLI writes every
  output first, then exits with code 3 (`ExitCode.GATE_FAILED`), so a person can see what failed.

Modules: population (the region items), sampling, validators, reviewers, estimate (the
interval and the gate), run (one QC run, pure), report (files and MLflow metrics),
gallery (the HTML review page), cli.
"""
