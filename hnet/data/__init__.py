"""The data pipeline: sources -> split -> tokenizer -> shards -> loader.

    tokenizer = tokenizer_for_run(run_config.data, run_dir)     # bytes, or BPE in RUN_DIR/tokenizer
    data = prepare_data(run_config.data, tokenizer)             # cached, memory-mapped
    loader = TrainLoader(data.train, seq_len, batch_size, seed, rank, world_size)
    for batch in val_batches(data.val, seq_len, batch_size): ...
"""

from hnet.data.loader import IGNORE_INDEX, TrainLoader, val_batches
from hnet.data.run_tokenizer import run_tokenizer_model, tokenizer_and_split, tokenizer_for_run
from hnet.data.shards import PreparedData, TokenSplit, prepare_data
from hnet.data.sources import Document, cache_root, iter_documents, resolve_path, source_files
from hnet.data.split import read_split, split_documents
from hnet.data.tokenizers import BPETokenizer, ByteTokenizer, train_bpe

__all__ = [
    "IGNORE_INDEX", "TrainLoader", "val_batches",
    "run_tokenizer_model", "tokenizer_and_split", "tokenizer_for_run",
    "PreparedData", "TokenSplit", "prepare_data",
    "Document", "cache_root", "iter_documents", "resolve_path", "source_files",
    "read_split", "split_documents",
    "BPETokenizer", "ByteTokenizer", "train_bpe",
]
