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

With --repeats N each preprocessing run (workers 1 and 2 alternated) and each loader's timed loop
(loaders in turn, a fresh iterator or stream each time) runs N times; printed: rates at the median
time, with min/max; written: one JSON line (bench/common.py). Ratios (medians): preprocessing
tokens/s 2 workers / 1 worker, and per HF baseline its time / the packed loader's time.

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
from typing import Deque, Dict, Iterator, List, Tuple

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("HF_HOME", os.path.join(REPO, ".cache", "hf"))

import numpy as np  # noqa: E402

from bench.common import Summary, add_repeats_arg, print_header, ratio, summarize, write_result  # noqa: E402

BASELINE = "HF streaming, tokenizer(texts)"
PACKED = "packed indexed loader"


def stdlib_files(limit: int) -> List[str]:
    """The stdlib's .py files in a fixed order (site-packages and caches left out), the first ``limit`` if given."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return out[:limit] if limit else out


def load_tool():
    """tools/preprocess_data.py as a module."""
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
    """Seconds to draw ``count`` batches."""
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return time.perf_counter() - start


def preprocess(tool, files: List[str], args: argparse.Namespace, tokenizer) -> Dict[str, Dict[str, Summary]]:
    """Run the preprocessing tool --repeats times per worker count (alternated); summaries per "preprocess wN"."""
    runs: Dict[int, List[Dict]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for workers in runs:
            prefix = os.path.join(args.workdir, f"stdlib_w{workers}")
            targs = tool.parse_args(["--input", *files, "--tokenizer", args.tokenizer, "--append-eod", "--output-prefix",
                                     prefix, "--workers", str(workers), "--force", "--no-progress"])
            runs[workers].append(tool.run(targs, tokenizer=tokenizer))
    results = {}
    for workers, summaries in runs.items():
        last = summaries[-1]
        res = {m: summarize([r[m] for r in summaries]) for m in ("elapsed_s", "documents_per_s", "tokens_per_s")}
        results[f"preprocess w{workers}"] = res
        print(f"preprocess --workers {workers}: {last['documents']} documents, {last['tokens']:,} tokens in "
              f"{res['elapsed_s'].fmt('.1f')} s -> {res['documents_per_s'].fmt(',.0f')} documents/s, "
              f"{res['tokens_per_s'].fmt(',.0f')} tokens/s")
    return results


def loaders(cfg, jsonl: str, tokenizer, args: argparse.Namespace) -> Tuple[Dict[str, Dict[str, Summary]], float]:
    """Time the packed loader and both HF streaming baselines --repeats times each (in turn); summaries
    of the seconds for the timed batches, and the first index build's seconds."""
    from megadfm.data.loader import collate_samples, make_train_iterator

    batches = args.samples // args.micro_batch
    for name in os.listdir(cfg.cache_dir) if os.path.isdir(cfg.cache_dir) else []:
        os.remove(os.path.join(cfg.cache_dir, name))  # time the index build from scratch (the first repeat's)
    seconds: Dict[str, List[float]] = {PACKED: [], BASELINE: [], "HF streaming, encode_batch_fast": []}
    setup: Dict[str, List[float]] = {k: [] for k in seconds}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        packed = make_train_iterator(cfg, 0, 1, args.micro_batch, 0, num_samples=batches * args.micro_batch)
        setup[PACKED].append(time.perf_counter() - t0)
        seconds[PACKED].append(timed_batches(packed, batches))
        for label, fast in ((BASELINE, False), ("HF streaming, encode_batch_fast", True)):
            t0 = time.perf_counter()
            stream = open_stream(jsonl, tokenizer, fast)
            setup[label].append(time.perf_counter() - t0)
            samples = streaming_baseline(stream, args.seq_len, cfg.eod_token_id)
            seconds[label].append(timed_batches((collate_samples([next(samples) for _ in range(args.micro_batch)])
                                                 for _ in itertools.count()), batches))
    results = {k: {"seconds": summarize(v), "setup_s": summarize(setup[k])} for k, v in seconds.items()}
    return results, setup[PACKED][0]


def main() -> None:
    """Preprocessing throughput, then loader throughput; prints the comparisons and writes the JSON line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=0, help="first N stdlib files (0: all, site-packages excluded)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per training sample")
    p.add_argument("--micro-batch", type=int, default=8, help="samples per batch")
    p.add_argument("--samples", type=int, default=1600, help="training samples timed per loader")
    p.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench_data"), help="scratch folder")
    p.add_argument("--tokenizer", default=os.path.join(REPO, "artifacts", "tokenizer", "qwen3"), help="tokenizer folder")
    add_repeats_arg(p, 1, "runs of each preprocessing and each loader timing")
    args = p.parse_args()

    from megadfm.data.config import BlendSource, DataConfig
    from megadfm.data.tokenizer import load_tokenizer

    os.makedirs(args.workdir, exist_ok=True)
    files = stdlib_files(args.files)
    tool = load_tool()
    tokenizer = load_tokenizer(args.tokenizer)
    # the loaders run in this process (TOKENIZERS_PARALLELISM=false); the preprocessing's 2nd worker is a forked process
    header = print_header("data", BASELINE, "HF datasets JSONL streaming=True, batched map tokenizer(texts), cut to seq_len",
                          1, "one process per loader; preprocessing: 1 or 2 worker processes")
    print(f"corpus: {len(files)} CPython {sys.version.split()[0]} stdlib files, "
          f"{sum(os.path.getsize(f) for f in files) / 1e6:.1f} MB; tokenizer {args.tokenizer}; {args.repeats} repeat(s), "
          f"rates at the median time [min, max]")

    # 1. preprocessing throughput
    results = preprocess(tool, files, args, tokenizer)
    speedup = ratio("preprocess tokens/s 2 workers / 1 worker", results, "tokens_per_s", "preprocess w2", "preprocess w1")
    same = all(open(f(os.path.join(args.workdir, f"stdlib_w{w}_text_document")), "rb").read()
               == open(f(os.path.join(args.workdir, "stdlib_w1_text_document")), "rb").read()
               for w in (2,) for f in (lambda q: q + ".bin", lambda q: q + ".idx"))
    print(f"preprocess speed-up 2 vs 1 workers: {speedup.value:.2f}x; outputs byte-identical: {same}")

    # 2. training-sample throughput
    prefix = os.path.join(args.workdir, "stdlib_w1_text_document")
    batches = args.samples // args.micro_batch
    cfg = DataConfig(blend=[BlendSource(prefix, 1.0)], seq_len=args.seq_len, split=[1.0, 0.0, 0.0],
                     cache_dir=os.path.join(args.workdir, "cache"))
    jsonl = os.path.join(args.workdir, "stdlib.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        for path in files:
            f.write(json.dumps({"text": open(path, encoding="utf-8", errors="replace").read()}) + "\n")
    n = batches * args.micro_batch
    timings, build = loaders(cfg, jsonl, tokenizer, args)
    results.update(timings)
    packed = results[PACKED]["seconds"]
    print(f"loader, {n} samples x {args.seq_len} tokens, micro-batch {args.micro_batch}, 1 process:")
    print(f"  {PACKED:33s}: {n / packed.median:10,.1f} samples/s  {n * args.seq_len / packed.median:12,.0f} "
          f"tokens/s  ({packed.fmt('.2f')} s; index build {build:.2f} s, once, cached)")
    ratios = [speedup]
    for label in (BASELINE, "HF streaming, encode_batch_fast"):
        stream = results[label]["seconds"]
        faster = ratio(f"{label} time / packed time", results, "seconds", label, PACKED)
        ratios.append(faster)
        print(f"  {label:33s}: {n / stream.median:10,.1f} samples/s  {n * args.seq_len / stream.median:12,.0f} tokens/s  "
              f"({stream.fmt('.2f')} s; load_dataset {results[label]['setup_s'].fmt('.2f')} s) -> packed is "
              f"{faster.value:.1f}x faster")
    write_result(header, args, results, ratios, extra={"files": len(files), "samples": n, "index_build_s": build,
                                                       "preprocess_outputs_identical": same})


if __name__ == "__main__":
    main()
