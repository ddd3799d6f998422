"""Measurements: what a step, a forward, a dtype, a gated adapter, training or the sandbox costs.

Each module owns one measurement (or report) behind one script, its flags, the JSON report it writes and its
markdown table; none is used by decoding, training or evaluation (this wing imports them, never the reverse):

* `step_cost` (`scripts/bench_step.py`): where a SPACE step's time goes against AR's;
* `roofline` (`scripts/bench_roofline.py`): memory bandwidth, bytes per token, the AR limit, and the forward
  cost curve the tree's shape is priced by (`load_cost_curve`);
* `gated_step_cost` (`scripts/bench_gated_step.py`): what a gated adapter adds to a step;
* `logit_noise` (`scripts/measure_logit_noise.py`): how far logits move between forwards of other shapes;
* `mask_accuracy` (`scripts/eval_mask_accuracy.py`): the masks' top-1 accuracy per offset on held-out answers;
* `training_throughput` (`scripts/bench_train.py`): SAR-SFT's cost per sample against plain SFT;
* `execution` (`scripts/bench_execution.py`): seconds per problem of the sandbox, isolated and not;
* `glance` (`scripts/make_glance.py`): the "at a glance" tables of the README and docs/benchmarks.md, generated
  from the results files.
"""
