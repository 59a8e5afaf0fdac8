"""Evaluation of teacher and students: perplexity on shared windows, size and generation speed, function-calling
validity, lm-evaluation-harness tasks, and the report that holds them all.

One module per job: :mod:`.perplexity` (masked NLL, evaluation windows), :mod:`.speed` (parameter counts,
throughput), :mod:`.toolcall` (tool-call validity), :mod:`.harness` (lm-eval on a loaded model), :mod:`.report`
(``eval.json`` + ``eval.md``). The ``eval`` stage (:mod:`hf_minitron.stages.evaluate`) runs them.
"""

from .windows import eval_windows, evaluate_perplexity, mean_nll, perplexity, windows_fingerprint

__all__ = ["eval_windows", "evaluate_perplexity", "mean_nll", "perplexity", "windows_fingerprint"]
