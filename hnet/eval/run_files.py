"""What evaluation reads from a run directory: its config, metrics, tokenizer and data."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from hnet.config import RunConfig, find_config, read_json, read_run_json
from hnet.constants import BOS

TRAINING_CONFIG = "training_config.json"  # an exported model's run config (its run.json), beside its weights
HARNESS_DIR = "lm_eval"  # RUN/lm_eval/results_<time>.json: what `hnet lm-eval` wrote for the run


def run_dir_of(path: str | Path) -> Path | None:
    """The run directory that a run, or one of its checkpoints, belongs to (None for a bare model)."""
    path = Path(path)
    for candidate in (path, path.parent.parent if path.parent.name == "checkpoints" else None):
        if candidate is not None and (candidate / "run.json").is_file():
            return candidate
    return None


def run_config(run_dir: Path) -> RunConfig:
    return RunConfig.from_json(run_dir / "run.json")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir}: the run has no metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_tokenizer(run_dir: Path, config: RunConfig):
    """The run's BPE tokenizer (RUN_DIR/tokenizer), or None for a byte-level run."""
    from hnet.data import BPETokenizer, run_tokenizer_model

    if config.data.tokenizer == "bytes":
        return None
    return BPETokenizer(run_tokenizer_model(run_dir))


def bytes_per_token(run_dir: Path, config: RunConfig) -> float:
    """Raw bytes per token of the run's training split (1 for bytes): read from the shard cache, which
    is built (and then cached) if it is not there."""
    from hnet.data import prepare_data

    tokenizer = run_tokenizer(run_dir, config)
    return 1.0 if tokenizer is None else prepare_data(config.data, tokenizer).train.bytes_per_token


def eval_documents(spec: str | Path) -> tuple[list[bytes], str]:
    """FILE_OR_CONFIG -> (documents, name): a run config's validation split, or all of a plain file (a .gz
    file decompressed) as one document."""
    from hnet.data import read_split

    path = Path(spec)
    if not path.is_file():
        try:
            path = find_config(spec)  # a preset by name
        except ValueError:
            raise ValueError(f"{spec}: data file does not exist (nor a preset name)") from None
    if path.suffix == ".json":
        data, path = read_run_json(path)
        if isinstance(data, dict) and "model" in data:
            val = read_split(RunConfig.from_dict(data, str(path)).data)[1]
            return [d.text for d in val], f"{path.stem}_val"
    text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if not text:
        raise ValueError(f"{path}: the data file is empty (0 bytes): nothing to evaluate")
    return [text], Path(path.name.removesuffix(".gz")).stem


def eval_sources(specs) -> list[tuple[str, Path | str]]:
    """FILE_OR_CONFIG or FOLDER, one or several -> (row name, spec) per file: a folder stands for every file
    under it (hidden ones left out), sorted, each named by its path inside the folder."""
    specs = [specs] if isinstance(specs, (str, Path)) else list(specs)
    if not specs:
        raise ValueError("no data to evaluate: give a file, a folder or a run config")
    sources = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise ValueError(f"{path}: the folder holds no files to evaluate")
            sources += [(str(p.relative_to(path)), p) for p in files]
        else:
            sources.append((str(spec), spec))
    return sources


@dataclass
class EvalModel:
    """A model with what scoring it needs: its tokenizer (None: bytes), the BOS id that starts each
    document, and the window it reads (its run's seq_len, else 8192)."""

    model: object
    tokenizer: object | None
    bos_id: int
    window: int
    path: Path  # the folder the weights were read from

    def encode(self, data: bytes) -> list[int]:
        return list(data) if self.tokenizer is None else self.tokenizer.encode(data).tolist()


def load_for_eval(model_path, device=None, dtype=None) -> EvalModel:
    """A run directory (its latest checkpoint), a checkpoint, a saved or exported model folder, or a Hub repo
    id: the model with its tokenizer and window, checked to belong together."""
    from hnet.data import BPETokenizer
    from hnet.data.tokenizers import check_trained_with
    from hnet.models import load_from_dir, model_dir
    from hnet.models.weights import TOKENIZER_FILE

    checkpoint = model_dir(model_path)  # verified once, then read
    model = load_from_dir(checkpoint, device=device, dtype=dtype)
    run = run_dir_of(model_path)
    if run is not None:
        config = run_config(run)
        tokenizer = run_tokenizer(run, config)
        seq_len, bos_id = config.data.seq_len, config.data.bos_id
    else:  # a model folder: an exported run keeps its tokenizer and its run config beside the weights
        tokenizer = BPETokenizer(checkpoint / TOKENIZER_FILE) if (checkpoint / TOKENIZER_FILE).is_file() else None
        trained = checkpoint / TRAINING_CONFIG
        data = read_json(trained).get("data", {}) if trained.is_file() else {}
        seq_len, bos_id = data.get("seq_len", 8192), data.get("bos_id", BOS)
    if tokenizer is not None and tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"{model_path}: the run's tokenizer has {tokenizer.vocab_size} pieces but the model "
                         f"predicts {model.config.vocab_size} ids: they do not belong together")
    if tokenizer is not None and (checkpoint / "state.json").is_file():
        recorded = json.loads((checkpoint / "state.json").read_text()).get("tokenizer")
        check_trained_with(tokenizer, recorded, checkpoint, "its bits per byte would be wrong: ")
    if tokenizer is None and model.config.vocab_size != 256:
        raise ValueError(f"{model_path}: a model over {model.config.vocab_size} ids needs the tokenizer of its run "
                         "directory (or tokenizer.model beside its weights)")
    return EvalModel(model, tokenizer, tokenizer.bos_id if tokenizer is not None else bos_id, seq_len, checkpoint)


def read_harness_results(run_dir: Path) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of the `hnet lm-eval` results kept in RUN/lm_eval/ (results_<time>.json, the
    later file winning where two measured the same metric); a metric's filter is named unless it is 'none'."""
    merged: dict[str, dict[str, float]] = {}
    for path in sorted((Path(run_dir) / HARNESS_DIR).glob("results_*.json")):
        try:
            results = json.loads(path.read_text()).get("results", {})
        except json.JSONDecodeError:
            raise ValueError(f"{path}: not valid JSON (a damaged lm-eval result; delete it or run it again)") from None
        for task, values in results.items():
            for key, value in values.items():
                metric, _, filter_name = key.partition(",")
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                if not filter_name or "_stderr" in metric or not numeric:
                    continue
                merged.setdefault(task, {})[metric if filter_name == "none" else f"{metric} ({filter_name})"] = value
    return merged
