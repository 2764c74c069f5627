"""lm-evaluation-harness on our models: `HNetLM`, the harness model "hnet", and `run_lm_eval` (`hnet lm-eval`).

This module imports lm_eval (the optional extra `pip install 'hnet-lm[eval]'`); nothing else in the package
imports it, so the rest runs without the harness.

What the harness asks and how it is answered, for byte models and the BPE baseline alike:
- loglikelihood(context, continuation): the text's UTF-8 bytes with BOS first, as training reads documents;
  the continuation's log-probability from one forward pass (`hnet.eval.likelihood`: batched, packed where
  lengths differ). A BPE model reads the same bytes through its tokenizer; as lm-eval's own HF model does,
  the context's trailing whitespace moves to the continuation and the whole text is encoded at once, the
  continuation's ids being those after the context's (the continuation encoded alone where the whole
  text's ids do not begin with the context's), so its ids cover exactly the continuation's bytes.
- loglikelihood_rolling(text): BOS + the text, in the windows of `hnet eval` (window = the run's seq_len,
  stride = window / 2): the harness's bits_per_byte of a text is `hnet eval`'s bpb of it.
- generate_until(context, gen_kwargs): our cached generation (`hnet.generation.stream_ids`), greedy unless
  do_sample; the output is cut before the first stop string, and before BOS (a model trained here begins
  the next document with it: its end-of-text). max_gen_toks counts the model's own ids: bytes for a byte
  model, tokens for the BPE baseline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lm_eval.models  # noqa: F401  (fills the harness's model registry first; `get_model` fills it only when empty)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm.auto import tqdm

from hnet.eval.bpb import token_nll
from hnet.eval.likelihood import continuation_logprobs
from hnet.eval.run_files import HARNESS_DIR, EvalModel, load_for_eval, run_dir_of
from hnet.generation import stream_ids

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_model("hnet")
class HNetLM(LM):
    """model_args: pretrained=RUN_OR_MODEL (a run, checkpoint, saved folder or Hub repo id), window, stride
    (ids; default the run's seq_len and half of it), packing (true: rows of different lengths packed into
    one sequence; false: right-padded), dtype (float32 | bfloat16 | float16). Or, from Python, `loaded=` an
    `EvalModel` (`hnet.eval.run_files.load_for_eval`)."""

    def __init__(self, pretrained=None, loaded: EvalModel | None = None, batch_size=16, device=None, dtype=None,
                 window=None, stride=None, packing=True, max_batch_size=None, progress=True):
        # max_batch_size: passed by simple_evaluate for batch_size "auto", which this model does not take
        super().__init__()
        if (pretrained is None) == (loaded is None):
            raise ValueError("give the model as pretrained=RUN_OR_MODEL (or, from Python, loaded=EvalModel)")
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size 'auto' is not supported by the hnet model: give a number")
        if loaded is None:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            if dtype is not None and dtype not in DTYPES:
                raise ValueError(f"dtype {dtype!r}: one of {', '.join(DTYPES)}")
            loaded = load_for_eval(pretrained, device=device, dtype=DTYPES.get(dtype))
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.tokenizer = loaded.tokenizer
        self.bos_id = loaded.bos_id
        self.window = int(window or loaded.window)
        self.stride = int(stride or max(self.window // 2, 1))
        self.batch_size = int(batch_size)
        self.packing, self.progress = _flag(packing), _flag(progress)
        self._device = next(self.model.parameters()).device

    # ---- text <-> ids

    def _encode(self, text: str) -> list[int]:
        return self.loaded.encode(text.encode("utf-8"))

    def _decode(self, ids: list[int]) -> str:
        data = bytes(ids) if self.tokenizer is None else self.tokenizer.decode(ids)
        return data.decode("utf-8", errors="replace")

    def request_ids(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(BOS + the context's ids, the continuation's ids): see the module's doc for BPE."""
        if self.tokenizer is None:
            return [self.bos_id, *self._encode(context)], self._encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        head, whole = self._encode(context), self._encode(context + continuation)
        tail = whole[len(head):] if whole[:len(head)] == head else self._encode(continuation)
        return [self.bos_id, *head], tail

    def _bar(self, total: int, what: str, disable: bool = False):
        return tqdm(total=total, desc=f"hnet {what}", unit="request", disable=disable or not self.progress)

    # ---- the three requests of the harness

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.request_ids(*r.args) for r in requests]
        with self._bar(len(pairs), "loglikelihood", disable_tqdm) as bar:
            results = continuation_logprobs(self.model, pairs, self.window, self.batch_size, self.packing, bar)
        for r, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text scored alone as BOS + its ids, every id once. A text that fits one window is one request
        of `continuation_logprobs` (batched with the others); a longer one is read in `hnet eval`'s windows."""
        docs = [[self.bos_id, *self._encode(r.args[0])] for r in requests]
        short = [i for i, ids in enumerate(docs) if len(ids) - 1 <= self.window]
        results = [0.0] * len(docs)
        with self._bar(len(docs), "loglikelihood_rolling", disable_tqdm) as bar:
            scored = continuation_logprobs(self.model, [(docs[i][:1], docs[i][1:]) for i in short], self.window,
                                           self.batch_size, self.packing, bar)
            for i, (logprob, _) in zip(short, scored):
                results[i] = logprob
            for i in sorted(set(range(len(docs))) - set(short)):
                ids = torch.tensor(docs[i], dtype=torch.long)
                results[i] = -float(token_nll(self.model, ids, self.window, self.stride, self.batch_size).sum())
                bar.update(1)
        for r, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, result)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests with the same generation arguments run together, `batch_size` rows at a time."""
        settings = [normalize_gen_kwargs(dict(r.args[1]) if len(r.args) > 1 else {}) for r in requests]
        groups: dict[str, list[int]] = {}
        for i, kwargs in enumerate(settings):
            groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(i)
        results = [""] * len(requests)
        with self._bar(len(requests), "generate_until", disable_tqdm) as bar:
            for members in groups.values():
                kwargs = settings[members[0]]
                for first in range(0, len(members), self.batch_size):
                    part = members[first:first + self.batch_size]
                    texts = self._generate([requests[i].args[0] for i in part], kwargs)
                    for i, text in zip(part, texts):
                        results[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(len(part))
        return results

    def _generate(self, contexts: list[str], kwargs: dict) -> list[str]:
        until = [u for u in kwargs["until"] if u]
        max_new = kwargs["max_gen_toks"]
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        keep = max(self.window - max_new, 1)  # as lm-eval's HF model: the prompt leaves room for the output
        rows = [[self.bos_id, *self._encode(c)][-keep:] for c in contexts]
        # Every row stops at BOS (a new document: the end of this one) and a byte model's row at its stop
        # strings' bytes; a BPE model's stop strings are found in the decoded text, all rows together.
        stops = [[self.bos_id]] + ([list(u.encode("utf-8")) for u in until] if self.tokenizer is None else [])
        generated = [[] for _ in rows]

        def done(ids):
            return self.bos_id in ids or any(u in self._decode(ids) for u in until)

        for new in stream_ids(self.model, rows, max_new, temperature, kwargs.get("top_k"), kwargs.get("top_p"),
                              stops):
            for out, token in zip(generated, new):
                if token is not None:
                    out.append(token)
            if self.tokenizer is not None and all(map(done, generated)):
                break
        texts = [self._decode(g[:g.index(self.bos_id)] if self.bos_id in g else g) for g in generated]
        return [min((t.split(u, 1)[0] for u in until), key=len, default=t) for t in texts]


def _flag(value) -> bool:
    """A model argument that is a bool, or its text in a model_args string."""
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def task_manager(tasks: list[str], include_path=None):
    """The harness's task index: only the folders of `include_path` (and YAML files named in `tasks`) where
    they hold every task, as indexing lm-eval's own thousands of tasks takes seconds; else those too."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in ([include_path] if isinstance(include_path, (str, Path)) else include_path or [])]
    for p in paths:
        if not Path(p).is_dir():
            raise ValueError(f"--include-path {p}: no such folder")
    local = TaskManager(include_path=paths or None, include_defaults=False)
    missing = [t for t in tasks if t not in local.all_tasks and not Path(t).is_file()]
    if not missing:
        return local
    manager = TaskManager(include_path=paths or None)
    unknown = [t for t in missing if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task {', '.join(unknown)}: not a task of lm-eval"
                         + (f" or of {', '.join(paths)}" if paths else "") + ", nor a task YAML file")
    return manager


def run_lm_eval(model_path, tasks: list[str], limit=None, batch_size: int = 16, out=None, include_path=None,
                num_fewshot: int | None = None, log_samples: bool = False, device=None, progress: bool = True,
                **model_args) -> tuple[dict, Path, Path]:
    """`hnet lm-eval`: lm_eval.simple_evaluate on a run or model; writes the harness's JSON (and, with
    log_samples, one jsonl of scored samples per task) and a markdown table to `out`, else RUN/lm_eval/.
    Returns (results, json path, markdown path)."""
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable, make_table

    if not tasks:
        raise ValueError("give at least one task (--tasks t1,t2)")
    manager = task_manager(tasks, include_path)
    lm = HNetLM(pretrained=model_path, batch_size=batch_size, device=device, progress=progress, **model_args)
    results = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                              task_manager=manager, log_samples=log_samples)
    results["config"].update(model="hnet", model_args={"pretrained": str(model_path), **model_args},
                             batch_size=batch_size, window=lm.window, stride=lm.stride)
    samples = results.pop("samples", None) or {}

    out = Path(out) if out else (run_dir_of(model_path) or Path(model_path)) / HARNESS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path, md_path = out / f"results_{stamp}.json", out / f"results_{stamp}.md"
    json_path.write_text(json.dumps(results, indent=1, default=handle_non_serializable) + "\n")
    for task, rows in samples.items():
        with open(out / f"samples_{task}_{stamp}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row, default=handle_non_serializable) + "\n")
    header = [f"# lm-eval: {model_path}", "",
              f"Tasks {', '.join(tasks)}; limit {limit if limit is not None else 'none'}; window {lm.window} ids, "
              f"stride {lm.stride}; lm_eval {_version()}.", ""]
    tables = [make_table(results)] + ([make_table(results, "groups")] if results.get("groups") else [])
    md_path.write_text("\n".join(header) + "\n".join(tables))
    return results, json_path, md_path


def _version() -> str:
    from importlib.metadata import version

    return version("lm_eval")
