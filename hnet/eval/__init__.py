"""Fair comparison: bits per byte on held-out text, FLOPs per byte, baselines sized to a FLOPs budget,
and the report over several runs.

    bits_per_byte(model, docs, tokenizer=None)        # {"bpb", "bytes", "nll_bits", ...}
    flops_per_byte(config, seq_len, bytes_per_chunk)  # forward FLOPs per byte, counted per layer
    size_baseline("transformer", target, seq_len, like=hnet_config)
    compare_runs(run_dirs, out_dir)                   # report.md, report.csv, plots
    continuation_logprobs(model, requests, window)    # log p(continuation | context), batched and packed
    export_model(run, out_dir)                        # a Hub model folder with the run's model card

lm-evaluation-harness: `hnet.eval.harness` (imports lm_eval, the optional extra; not imported here).
"""

from hnet.eval.baselines import baseline_config, size_baseline
from hnet.eval.bpb import bits_per_byte, evaluate_path
from hnet.eval.compare import compare_runs
from hnet.eval.export import export_model
from hnet.eval.flops import flops_breakdown, flops_per_byte
from hnet.eval.likelihood import continuation_logprobs

__all__ = [
    "baseline_config", "size_baseline", "bits_per_byte", "evaluate_path",
    "compare_runs", "continuation_logprobs", "export_model", "flops_breakdown", "flops_per_byte",
]
