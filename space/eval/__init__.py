"""Evaluation harness: datasets and prompts, timed runs of every method, metrics, quality, reports.

`scripts/eval_infer.py` is the command line; this package holds the reusable pieces:
`datasets` (prompts to evaluate), `prompts` (model input text per prompt style), `harness`
(interleaved, timed, resumable runs), `metrics` (speed and the original SPACE metrics),
`execution` (pass@k sandbox), `rouge` (ROUGE-L), `report` (JSON, markdown, figure).
"""
