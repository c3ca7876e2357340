"""Data pipeline throughput on the real CPython standard library, one run, ratios against named baselines.

1. Preprocessing (tools/preprocess_data.py, real Qwen3 tokenizer): documents/s and tokens/s with
   --workers 1 and --workers 2 (tokenizer loading excluded; output bytes checked identical).
2. Training-sample throughput, single process, same corpus, same seq_len and micro-batch, both
   producing the batch contract of megadfm/data/batch.py through the same collate:
   - candidate: the packed indexed loader (make_train_iterator: memory-mapped MMIDIDX, shuffled);
   - baselines: HF ``datasets`` reading the corpus as JSONL with ``streaming=True``, tokenizing on
     the fly with a batched ``map`` (the usual idiom: ``tokenizer(texts)``; and, as a stronger
     baseline, the Rust backend's ``encode_batch_fast`` that the preprocessing tool uses), appending
     EOD and cutting the token stream into seq_len samples with document segments (no shuffle: it
     does less work than the candidate).
   TOKENIZERS_PARALLELISM=false everywhere, so each loader uses one core.

    python bench/bench_data.py                       # full stdlib (site-packages excluded), seq_len 2048
    python bench/bench_data.py --files 300 --samples 500
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import itertools
import json
import os
import sys
import sysconfig
import time
from typing import Deque, Dict, Iterator, List

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("HF_HOME", os.path.join(REPO, ".cache", "hf"))

import numpy as np  # noqa: E402


def stdlib_files(limit: int) -> List[str]:
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return out[:limit] if limit else out


def load_tool():
    spec = importlib.util.spec_from_file_location("preprocess_data_tool", os.path.join(REPO, "tools", "preprocess_data.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # forked workers find encode_chunk by module name
    spec.loader.exec_module(module)
    return module


def open_stream(jsonl: str, tokenizer, fast: bool):
    """HF streaming dataset of token ids, tokenized on the fly by ``tokenizer(texts)`` or, with
    ``fast``, by the Rust backend's ``encode_batch_fast`` (what the preprocessing tool uses)."""
    import datasets

    stream = datasets.load_dataset("json", data_files=jsonl, split="train", streaming=True)
    if fast:
        backend = tokenizer.backend_tokenizer
        encode = lambda b: {"input_ids": [e.ids for e in backend.encode_batch_fast(b["text"], add_special_tokens=False)]}
    else:
        encode = lambda b: {"input_ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]}
    return stream.map(encode, batched=True, batch_size=64, remove_columns=["text"])


def streaming_baseline(stream, seq_len: int, eod: int) -> Iterator[Dict[str, object]]:
    """Samples in the packed loader's format, cut from the stream's token ids as they arrive."""
    buffer: List[int] = []
    pieces: Deque[int] = collections.deque()  # lengths of the document pieces still in the buffer
    index = 0
    for example in stream:
        ids = example["input_ids"] + [eod]
        buffer.extend(ids)
        pieces.append(len(ids))
        while len(buffer) >= seq_len:
            cut, need = [], seq_len
            while need:
                take = min(pieces[0], need)
                cut.append(take)
                need -= take
                if take == pieces[0]:
                    pieces.popleft()
                else:
                    pieces[0] -= take
            yield {"tokens": np.asarray(buffer[:seq_len], dtype=np.int64), "num_tokens": seq_len, "segment_lengths": cut,
                   "sample_index": index, "dataset_index": 0, "dataset_sample_index": index}
            buffer, index = buffer[seq_len:], index + 1


def timed_batches(batches: Iterator, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=0, help="first N stdlib files (0: all, site-packages excluded)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per training sample")
    p.add_argument("--micro-batch", type=int, default=8, help="samples per batch")
    p.add_argument("--samples", type=int, default=1600, help="training samples timed per loader")
    p.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench_data"), help="scratch folder")
    p.add_argument("--tokenizer", default=os.path.join(REPO, "artifacts", "tokenizer", "qwen3"), help="tokenizer folder")
    args = p.parse_args()

    from megadfm.data.config import BlendSource, DataConfig
    from megadfm.data.loader import collate_samples, make_train_iterator
    from megadfm.data.tokenizer import load_tokenizer

    os.makedirs(args.workdir, exist_ok=True)
    files = stdlib_files(args.files)
    tool = load_tool()
    tokenizer = load_tokenizer(args.tokenizer)
    print(f"corpus: {len(files)} CPython {sys.version.split()[0]} stdlib files, "
          f"{sum(os.path.getsize(f) for f in files) / 1e6:.1f} MB; tokenizer {args.tokenizer}")

    # 1. preprocessing throughput
    rates = {}
    for workers in (1, 2):
        prefix = os.path.join(args.workdir, f"stdlib_w{workers}")
        targs = tool.parse_args(["--input", *files, "--tokenizer", args.tokenizer, "--append-eod", "--output-prefix",
                                 prefix, "--workers", str(workers), "--force", "--no-progress"])
        summary = tool.run(targs, tokenizer=tokenizer)
        rates[workers] = summary
        print(f"preprocess --workers {workers}: {summary['documents']} documents, {summary['tokens']:,} tokens in "
              f"{summary['elapsed_s']:.1f} s -> {summary['documents_per_s']:,.0f} documents/s, "
              f"{summary['tokens_per_s']:,.0f} tokens/s")
    same = all(open(f(os.path.join(args.workdir, f"stdlib_w{w}_text_document")), "rb").read()
               == open(f(os.path.join(args.workdir, "stdlib_w1_text_document")), "rb").read()
               for w in (2,) for f in (lambda q: q + ".bin", lambda q: q + ".idx"))
    print(f"preprocess speed-up 2 vs 1 workers: {rates[2]['tokens_per_s'] / rates[1]['tokens_per_s']:.2f}x; "
          f"outputs byte-identical: {same}")

    # 2. training-sample throughput
    prefix = os.path.join(args.workdir, "stdlib_w1_text_document")
    batches = args.samples // args.micro_batch
    cfg = DataConfig(blend=[BlendSource(prefix, 1.0)], seq_len=args.seq_len, split=[1.0, 0.0, 0.0],
                     cache_dir=os.path.join(args.workdir, "cache"))
    for name in os.listdir(cfg.cache_dir) if os.path.isdir(cfg.cache_dir) else []:
        os.remove(os.path.join(cfg.cache_dir, name))  # time the index build from scratch
    start = time.perf_counter()
    packed = make_train_iterator(cfg, 0, 1, args.micro_batch, 0, num_samples=batches * args.micro_batch)
    build = time.perf_counter() - start
    packed_s = timed_batches(packed, batches)

    jsonl = os.path.join(args.workdir, "stdlib.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        for path in files:
            f.write(json.dumps({"text": open(path, encoding="utf-8", errors="replace").read()}) + "\n")
    n = batches * args.micro_batch
    print(f"loader, {n} samples x {args.seq_len} tokens, micro-batch {args.micro_batch}, 1 process:")
    print(f"  packed indexed loader            : {n / packed_s:10,.1f} samples/s  {n * args.seq_len / packed_s:12,.0f} "
          f"tokens/s  (index build {build:.2f} s, once, cached)")
    for label, fast in (("HF streaming, tokenizer(texts)", False), ("HF streaming, encode_batch_fast", True)):
        start = time.perf_counter()
        stream = open_stream(jsonl, tokenizer, fast)
        setup = time.perf_counter() - start
        samples = streaming_baseline(stream, args.seq_len, cfg.eod_token_id)
        stream_s = timed_batches((collate_samples([next(samples) for _ in range(args.micro_batch)])
                                  for _ in itertools.count()), batches)
        print(f"  {label:33s}: {n / stream_s:10,.1f} samples/s  {n * args.seq_len / stream_s:12,.0f} tokens/s  "
              f"(load_dataset {setup:.2f} s) -> packed is {stream_s / packed_s:.1f}x faster")


if __name__ == "__main__":
    main()
