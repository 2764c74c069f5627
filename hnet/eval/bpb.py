"""Bits per byte on held-out text: the total NLL in bits of a text over the number of its raw bytes.

The same number for byte models and BPE models: a BPE model scores the tokens of the text's greedy
tokenization, and their NLL is divided by the raw bytes those tokens cover, i.e. by the length of the
text. (This slightly favours BPE, which never pays for the choice among tokenizations of a text.)

Each document is scored alone as BOS + its ids. One longer than the window is read in windows of
`window` ids that start `stride` apart; the last window ends at the document's end. Every id is scored
once, in the first window that holds it, so the ids a window scores (after the first window) have at
least `window - stride` ids of context before them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hnet.constants import BOS, LN2


def plan_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """For n ids (BOS included), the windows as (start, skip): the window reads ids[start:start + W]
    (W = min(window, n - 1)) and scores its predictions from position skip on, i.e. targets
    start + skip + 1 .. start + W."""
    if not 0 < stride <= window:
        raise ValueError(f"stride {stride} must be in [1, window {window}]: a larger stride would skip bytes")
    w = min(window, n - 1)
    last = n - 1 - w
    starts = [*range(0, last, stride), last]
    plan, scored_to = [], 0  # targets 1..scored_to are scored
    for start in starts:
        plan.append((start, scored_to - start))
        scored_to = start + w
    return plan


@torch.no_grad()
def token_nll(model, ids: torch.Tensor, window: int, stride: int, batch_size: int = 8, progress=None) -> torch.Tensor:
    """ids (n,) int64 with BOS first -> (n - 1,) float64 NLL in nats of ids[1:], each scored exactly once."""
    n = len(ids)
    nll = torch.full((n - 1,), float("nan"), dtype=torch.float64)
    if n < 2:
        return nll
    plan = plan_windows(n, window, stride)
    w = min(window, n - 1)
    device = next(model.parameters()).device
    for first in range(0, len(plan), batch_size):
        part = plan[first:first + batch_size]
        inputs = torch.stack([ids[s:s + w] for s, _ in part]).to(device)
        logits = model(inputs).logits
        for row, (start, skip) in enumerate(part):
            targets = ids[start + skip + 1:start + w + 1].to(device)
            logp = F.log_softmax(logits[row, skip:].float(), dim=-1)
            nll[start + skip:start + w] = -logp.gather(-1, targets[:, None]).squeeze(-1).double().cpu()
        if progress is not None:
            progress.update(len(part))
    return nll


def bits_per_byte(model, docs: list[bytes], tokenizer=None, bos_id: int = BOS, window: int = 8192,
                  stride: int | None = None, batch_size: int = 8, progress: bool = False) -> dict:
    """bpb of `model` over `docs` (raw bytes each). tokenizer: None for a byte model, else a BPETokenizer
    (its own BOS is used). stride defaults to window // 2."""
    from tqdm.auto import tqdm

    stride = stride or max(window // 2, 1)
    if tokenizer is None:
        encoded = [np.frombuffer(d, dtype=np.uint8) for d in docs]
    else:
        encoded, bos_id = [tokenizer.encode(d) for d in docs], tokenizer.bos_id
    sequences = [torch.from_numpy(np.concatenate([[bos_id], e]).astype(np.int64)) for e in encoded]
    total = sum(len(plan_windows(len(s), window, stride)) for s in sequences if len(s) > 1)
    was_training = model.training
    model.eval()
    nll_nats, tokens = 0.0, 0
    with tqdm(total=total, desc="eval", unit="window", disable=not progress) as bar:
        for seq in sequences:
            nll = token_nll(model, seq, window, stride, batch_size, bar)
            nll_nats += float(nll.sum())
            tokens += len(nll)
    model.train(was_training)
    n_bytes = sum(len(d) for d in docs)
    nll_bits = nll_nats / LN2
    return {"bpb": nll_bits / max(n_bytes, 1), "bytes": n_bytes, "nll_bits": nll_bits, "tokens": tokens,
            "documents": len(docs), "window": window, "stride": stride}


def evaluate_path(model_path, data, out=None, window: int | None = None, stride: int | None = None,
                  progress: bool = True) -> tuple[dict, Path]:
    """`hnet eval`: bpb of a run, checkpoint or model folder on FILE_OR_CONFIG, a folder (each file under it)
    or a list of them: one row per file (or config's validation split) under "rows", and their total at the
    top level. Writes the JSON result to `out`, else RUN/eval/<data name>.json (MODEL/eval/... for a bare
    model). Returns (result, path)."""
    from hnet.eval.run_files import eval_documents, eval_sources, load_for_eval, run_dir_of

    sources = eval_sources(data)
    documents = [(name, *eval_documents(spec)) for name, spec in sources]  # every file read before scoring
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_for_eval(model_path, device=device)
    window = window or loaded.window
    rows = []
    for name, docs, _ in documents:
        row = bits_per_byte(loaded.model, docs, loaded.tokenizer, loaded.bos_id, window, stride, progress=progress)
        rows.append(dict(row, name=name))
    nll_bits, n_bytes = sum(r["nll_bits"] for r in rows), sum(r["bytes"] for r in rows)
    result = {"bpb": nll_bits / max(n_bytes, 1), "bytes": n_bytes, "nll_bits": nll_bits,
              "tokens": sum(r["tokens"] for r in rows), "documents": sum(r["documents"] for r in rows),
              "window": rows[0]["window"], "stride": rows[0]["stride"], "rows": rows,
              "model": str(model_path), "data": str(data) if isinstance(data, (str, Path)) else [str(d) for d in data]}
    specs = [data] if isinstance(data, (str, Path)) else list(data)
    name = documents[0][2] if len(documents) == 1 else "+".join(Path(s).name for s in specs)[:100]
    path = Path(out) if out else (run_dir_of(model_path) or Path(model_path)) / "eval" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result, path
