#!/usr/bin/env python
"""Tokenize raw text into Megatron MMIDIDX v1 indexed datasets, byte-compatible with Megatron-LM.

    python tools/preprocess_data.py --input data/corpus.jsonl --tokenizer artifacts/tokenizer/qwen3 \\
        --append-eod --output-prefix data/corpus --workers 4
    # the Python standard library as a code corpus, in one command:
    python tools/preprocess_data.py --input "$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" \\
        --glob '**/*.py' --exclude 'site-packages/*' --tokenizer artifacts/tokenizer/qwen3 --append-eod \\
        --output-prefix data/stdlib

Writes ``{prefix}_{key}_document.bin/.idx`` per JSON key (as Megatron names them) and
``{prefix}_summary.json`` (documents, tokens, largest token id, dtype, tokenizer hashes, input
files, empty / invalid / undecodable documents, elapsed). Outputs are written under temporary
names and renamed when complete; the summary is written last, so a killed run leaves nothing
under a final name.
``--chat`` reads instruction records instead (JSONL lines with ``messages`` or ``prompt``/``response``,
megadfm/data/chat.py): each example becomes ONE document of TWO sequences [prompt, response] in
``{prefix}_chat_document.bin/.idx``, the chat template applied as transformers' apply_chat_template
does (see megadfm/data/README.md, "Instruction (chat) data"):

    python tools/preprocess_data.py --chat --input data/sft.jsonl --tokenizer artifacts/tokenizer/qwen3 \\
        --output-prefix data/sft --max-length 2048 --overlong truncate-prompt

A run whose summary matches the inputs, options and tokenizer is skipped ("up to date") unless
``--force``. ``--workers N`` gives byte-identical output to ``--workers 1`` (order is kept).

Empty documents are kept as empty documents (a repeated document index, as Megatron does), so
document j of the output is record j of the input; they are counted and logged. Token ids at or
above the tokenizer's size are an error naming the record (docs/DESIGN.md §5).
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import sys
import time
from typing import Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import megadfm  # noqa: E402
from megadfm.data.indexed import CODE_OF_DTYPE, IndexedDatasetWriter, bin_path, dtype_for_vocab, idx_path  # noqa: E402
from megadfm.data.sources import Record, count_records, discover, input_files, iter_records  # noqa: E402
from megadfm.io_utils import write_text_atomic  # noqa: E402
from megadfm.data.chat import END_OF_TURN, OVERLONG_POLICIES, QWEN3_CHAT_TEMPLATE  # noqa: E402

logger = logging.getLogger("preprocess_data")
TOOL_VERSION = f"{megadfm.__version__}/preprocess-1"  # bump the suffix when the output bytes change
CHUNK_DOCS, CHUNK_CHARS = 256, 1 << 20  # work unit sent to a worker: whichever limit is hit first
MAX_LOGGED = 5  # per kind of problem, the first locations are logged individually


class PreprocessError(RuntimeError):
    """Bad input found while tokenizing; the message names the record."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help="Files (.jsonl, .json, .jsonl.gz, .parquet), folders saved with datasets' save_to_disk, or "
                        "folders whose files --glob selects (one document per file unless JSONL/parquet).")
    p.add_argument("--glob", default=None, help="Pattern (recursive '**' allowed) selecting files inside --input folders.")
    p.add_argument("--exclude", nargs="*", default=[],
                   help="Patterns of paths inside --input folders to skip, e.g. 'site-packages/*' 'test/*' (* crosses /).")
    p.add_argument("--json-keys", nargs="+", default=["text"],
                   help="Fields to tokenize; each gives its own output {prefix}_{key}_document (default: text).")
    p.add_argument("--hf-split", default=None, help="Split to read when a saved HF dataset is a DatasetDict.")
    p.add_argument("--tokenizer", required=True, help="Local HF tokenizer folder (never the network).")
    p.add_argument("--append-eod", action="store_true", help="Append the end-of-document token to every non-empty document.")
    p.add_argument("--eod-token", default="<|endoftext|>", help="Token appended by --append-eod (default: <|endoftext|>).")
    p.add_argument("--output-prefix", required=True, help="Outputs are {prefix}_{key}_document.bin/.idx and {prefix}_summary.json.")
    p.add_argument("--workers", type=int, default=1, help="Tokenizer processes; output is byte-identical for any value.")
    p.add_argument("--max-documents", type=int, default=None, help="Stop after this many input records.")
    p.add_argument("--force", action="store_true", help="Rebuild even when the summary says the outputs are up to date.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar (log lines only).")
    chat = p.add_argument_group("instruction (chat) data", "Only with --chat.")
    chat.add_argument("--chat", action="store_true",
                      help="Read JSONL chat records ('messages' list of {role, content}, roles system/user/assistant; "
                           "or 'prompt'/'response' strings, optional 'system') and write each example as one document "
                           "of two sequences [prompt, response] to {prefix}_chat_document.")
    chat.add_argument("--all-turns", action="store_true",
                      help="One example per assistant turn (its earlier turns in the prompt) instead of only the last.")
    chat.add_argument("--max-length", type=int, default=None,
                      help="Most tokens of an example (prompt + response); longer ones follow --overlong.")
    chat.add_argument("--overlong", choices=OVERLONG_POLICIES, default="drop",
                      help="Examples over --max-length: truncate-prompt cuts the prompt from the left (an example whose "
                           "response leaves no room for one prompt token is dropped); drop drops them (default). "
                           "Both are counted in the summary.")
    chat.add_argument("--chat-template", default=None,
                      help="Jinja chat template file to apply instead of the tokenizer folder's own (default: the "
                           "folder's; megadfm's Qwen3 template for the offline-built Qwen3 folder, which has none).")
    chat.add_argument("--end-of-turn", default=END_OF_TURN,
                      help=f"Token every response must end with (default: {END_OF_TURN}).")
    chat.add_argument("--turn-newline", action="store_true",
                      help="Keep the newline the template writes after the end-of-turn token at the end of the "
                           "response (default: responses end with the end-of-turn token).")
    args = p.parse_args(argv)
    chat_only = [f for f, on in (("--all-turns", args.all_turns), ("--max-length", args.max_length is not None),
                                 ("--chat-template", args.chat_template is not None), ("--turn-newline", args.turn_newline),
                                 ("--end-of-turn", args.end_of_turn != END_OF_TURN)) if on]
    if chat_only and not args.chat:
        p.error(f"{', '.join(chat_only)} only apply with --chat")
    if args.chat:
        if args.append_eod:
            p.error("--append-eod does not apply with --chat: an example is exactly [prompt, response]")
        if args.workers != 1:
            p.error("--chat tokenizes in one process: use --workers 1")
        if args.json_keys != ["text"]:
            p.error("--json-keys does not apply with --chat (records have 'messages' or 'prompt'/'response')")
        if args.chat_template is not None and not os.path.isfile(args.chat_template):
            p.error(f"--chat-template {args.chat_template}: file not found")
        if args.max_length is not None and args.max_length < 2:
            p.error(f"--max-length must be >= 2 (one prompt and one response token), got {args.max_length}")
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    if args.max_documents is not None and args.max_documents < 1:
        p.error(f"--max-documents must be >= 1, got {args.max_documents}")
    return args


def output_prefix(prefix: str, key: str) -> str:
    return f"{prefix}_{key}_document"


def summary_path(prefix: str) -> str:
    return f"{prefix}_summary.json"


def tokenizer_hashes(folder: str) -> Dict[str, str]:
    """sha256 of every file of the tokenizer folder: a changed vocabulary or config invalidates outputs."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[name] = h.hexdigest()
    return out


def fingerprint(args: argparse.Namespace, files: List[Dict[str, object]], tok_hashes: Dict[str, str]) -> str:
    """Hash of everything that determines the output bytes (not --workers: it changes nothing)."""
    desc = {"tool_version": TOOL_VERSION, "files": files, "tokenizer": tok_hashes, "options": options(args)}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def options(args: argparse.Namespace) -> Dict[str, object]:
    out = {"json_keys": args.json_keys, "glob": args.glob, "exclude": args.exclude, "hf_split": args.hf_split,
           "append_eod": args.append_eod, "eod_token": args.eod_token, "max_documents": args.max_documents}
    if args.chat:  # only then: the fingerprints of plain-text outputs stay what they were
        template_file_sha = None
        if args.chat_template is not None:
            with open(args.chat_template, "rb") as f:
                template_file_sha = hashlib.sha256(f.read()).hexdigest()
        out.update(chat=True, all_turns=args.all_turns, max_length=args.max_length, overlong=args.overlong,
                   end_of_turn=args.end_of_turn, turn_newline=args.turn_newline, chat_template_file_sha256=template_file_sha,
                   builtin_template_sha256=hashlib.sha256(QWEN3_CHAT_TEMPLATE.encode()).hexdigest())
    return out


def up_to_date(args: argparse.Namespace, digest: str) -> bool:
    """The summary exists, has this fingerprint, and every output it lists is there at its recorded size."""
    path = summary_path(args.output_prefix)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        try:
            summary = json.load(f)
        except json.JSONDecodeError as e:  # damaged or not ours: rebuilding over it silently would hide what wrote it
            raise PreprocessError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); delete it or pass --force "
                                  f"to rebuild {args.output_prefix}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("outputs"), dict):
        raise PreprocessError(f"{path}: not a preprocessing summary (no 'outputs' mapping); delete it or pass --force "
                              f"to rebuild {args.output_prefix}")
    if summary.get("fingerprint") != digest:
        return False
    for out in summary["outputs"].values():
        for file, size in ((bin_path(out["prefix"]), out["bin_bytes"]), (idx_path(out["prefix"]), out["idx_bytes"])):
            if not os.path.isfile(file) or os.path.getsize(file) != size:
                return False
    return True


# -- tokenization (runs in worker processes; the encoder is inherited through fork) ------------

_ENCODER: Optional[Tuple[object, Optional[int]]] = None  # (tokenizers.Tokenizer, eod id or None)


def encode_chunk(texts_per_key: List[List[str]]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Per key: (all token ids of the chunk concatenated, int64 length of each document)."""
    assert _ENCODER is not None, "encode_chunk needs the encoder set up by run()"
    backend, eod = _ENCODER
    out = []
    for texts in texts_per_key:
        encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
        ids = [e.ids + [eod] if eod is not None and e.ids else e.ids for e in encodings]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        out.append((flat, lengths))
    return out


def chunks(records: Iterable[Record], keys: Sequence[str]) -> Iterator[List[Record]]:
    batch: List[Record] = []
    chars = 0
    for rec in records:
        batch.append(rec)
        chars += sum(len(rec.texts[k]) for k in keys)
        if len(batch) >= CHUNK_DOCS or chars >= CHUNK_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def ordered_map(pool, batches: Iterable[List[Record]], keys: Sequence[str], workers: int) \
        -> Iterator[Tuple[List[Record], List[Tuple[np.ndarray, np.ndarray]]]]:
    """encode_chunk over batches, results in input order; at most 2*workers chunks in flight (bounded memory)."""
    if pool is None:
        for batch in batches:
            yield batch, encode_chunk([[r.texts[k] for r in batch] for k in keys])
        return
    pending: Deque = collections.deque()
    for batch in batches:
        pending.append((batch, pool.apply_async(encode_chunk, ([[r.texts[k] for r in batch] for k in keys],))))
        if len(pending) >= 2 * workers:
            done, result = pending.popleft()
            yield done, result.get()
    while pending:
        done, result = pending.popleft()
        yield done, result.get()


def refuse_empty_input(args: argparse.Namespace, sources) -> None:
    """An input with no record would give a 0-document dataset that fails only later, in training."""
    if next(iter_records(sources, args.json_keys, args.hf_split), None) is None:
        raise PreprocessError(f"no documents in --input {' '.join(args.input)} (--glob {args.glob!r}, --json-keys "
                              f"{' '.join(args.json_keys)}): nothing to tokenize, nothing written")


def remove_leftovers(prefixes: Sequence[str]) -> None:
    """Delete temporaries a killed earlier run left next to these outputs (they are never complete)."""
    for prefix in prefixes:
        for path in sorted(glob.glob(glob.escape(bin_path(prefix)) + ".tmp.*")
                           + glob.glob(glob.escape(idx_path(prefix)) + ".tmp.*")):
            logger.warning("removing %s, left by an interrupted run", path)
            os.remove(path)


# -- the job -------------------------------------------------------------------------------------

def reuse_or_reset_summary(args: argparse.Namespace, digest: str) -> Optional[Dict[str, object]]:
    """The previous run's summary when its outputs match ``digest`` (and no --force); else None, with any
    old summary removed first: outputs without a summary are never taken as up to date."""
    if not args.force and up_to_date(args, digest):
        logger.info("up to date: %s matches the inputs, options and tokenizer (use --force to rebuild)",
                    summary_path(args.output_prefix))
        with open(summary_path(args.output_prefix), encoding="utf-8") as f:
            return json.load(f)
    if os.path.exists(summary_path(args.output_prefix)):
        os.remove(summary_path(args.output_prefix))
    return None


def _load_tokenizer(path: str):
    from megadfm.data.tokenizer import load_tokenizer

    return load_tokenizer(path)


def run(args: argparse.Namespace, tokenizer=None) -> Dict[str, object]:
    """Preprocess as ``args`` says; returns the summary. ``tokenizer`` skips reloading one already loaded."""
    global _ENCODER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # --workers is the only parallelism
    if args.chat:
        return run_chat(args, tokenizer)
    started = time.time()
    sources = discover(args.input, args.glob, args.exclude)
    refuse_empty_input(args, sources)
    files = input_files(sources)
    from megadfm.data.tokenizer import check_tokenizer_folder

    check_tokenizer_folder(args.tokenizer)  # hashed below before it is loaded: a missing folder is a TokenizerError
    tok_hashes = tokenizer_hashes(args.tokenizer)
    digest = fingerprint(args, files, tok_hashes)
    previous = reuse_or_reset_summary(args, digest)
    if previous is not None:
        return previous
    tokenizer = tokenizer or _load_tokenizer(args.tokenizer)
    vocab = len(tokenizer)
    dtype = dtype_for_vocab(vocab)
    eod = tokenizer.convert_tokens_to_ids(args.eod_token) if args.append_eod else None
    if args.append_eod and (eod is None or tokenizer.convert_ids_to_tokens(eod) != args.eod_token):
        raise PreprocessError(f"--eod-token {args.eod_token!r} is not a token of {args.tokenizer}")
    _ENCODER = (tokenizer.backend_tokenizer, eod)
    keys = list(args.json_keys)
    logger.info("%d input files (%s), keys %s, tokenizer %s (%d tokens) -> %s, eod %s, %d worker(s)",
                len(files), ", ".join(sorted({s.kind for s in sources})), keys, args.tokenizer, vocab, dtype.name,
                eod, args.workers)

    total = count_records(sources, args.hf_split)
    if args.max_documents is not None:
        total = args.max_documents if total is None else min(total, args.max_documents)
    records = itertools.islice(iter_records(sources, keys, args.hf_split), args.max_documents)
    stats = {k: collections.Counter() for k in keys}
    remove_leftovers([output_prefix(args.output_prefix, k) for k in keys])
    writers: Dict[str, IndexedDatasetWriter] = {}
    t0 = time.time()
    pool = multiprocessing.get_context("fork").Pool(args.workers) if args.workers > 1 else None  # fork before tqdm's thread
    bar = tqdm(total=total, unit="doc", desc="tokenizing", disable=args.no_progress, dynamic_ncols=True, mininterval=1.0)
    try:
        writers.update((k, IndexedDatasetWriter(output_prefix(args.output_prefix, k), dtype)) for k in keys)
        for batch, encoded in ordered_map(pool, chunks(records, keys), keys, args.workers):
            for key, (flat, lengths) in zip(keys, encoded):
                top = int(flat.max()) if flat.size else -1
                if top >= vocab:
                    bad = int(np.argmax(flat >= vocab))
                    doc = int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
                    raise PreprocessError(f"{batch[doc].location}: field {key!r} tokenized to id {int(flat[bad])}, "
                                          f">= the tokenizer's size {vocab} ({args.tokenizer})")
                writers[key].add_documents(flat, lengths)
                _count(stats[key], key, batch, lengths)
                if top >= 0:  # only once a token is written: an output without tokens records null, not 0
                    stats[key]["max_token_id"] = max(stats[key]["max_token_id"], top)
            bar.update(len(batch))
            bar.set_postfix_str(f"{sum(s['tokens'] for s in stats.values()) / max(time.time() - t0, 1e-9):,.0f} tok/s",
                                refresh=False)
        for w in writers.values():
            w.finalize()
    except BaseException:
        for w in writers.values():
            w.abort()  # no half-written output under a temporary name either
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    summary = _summary(args, files, tok_hashes, digest, dtype, vocab, eod, stats, time.time() - t0, time.time() - started)
    write_text_atomic(summary_path(args.output_prefix), json.dumps(summary, indent=1))
    return summary


# -- --chat: instruction examples ------------------------------------------------------------

def run_chat(args: argparse.Namespace, tokenizer=None) -> Dict[str, object]:
    """``--chat``: every example of every record as one [prompt, response] document; returns the summary."""
    from megadfm.data.chat import ChatEncoder, ChatError, fit_to_length, iter_jsonl_objects, resolve_chat_template
    from megadfm.data.tokenizer import check_tokenizer_folder

    started = time.time()
    sources = discover(args.input, args.glob, args.exclude)
    not_jsonl = [s.path for s in sources if s.kind not in ("jsonl", "jsonl.gz")]
    if not_jsonl:
        raise PreprocessError(f"--chat reads JSONL files (.jsonl, .json, .jsonl.gz); not one: {not_jsonl[0]}")
    files = input_files(sources)
    check_tokenizer_folder(args.tokenizer)
    tok_hashes = tokenizer_hashes(args.tokenizer)
    digest = fingerprint(args, files, tok_hashes)
    prefix = output_prefix(args.output_prefix, "chat")
    previous = reuse_or_reset_summary(args, digest)
    if previous is not None:
        return previous
    tokenizer = tokenizer or _load_tokenizer(args.tokenizer)
    template = resolve_chat_template(args.tokenizer, tokenizer, args.chat_template)
    encoder = ChatEncoder(tokenizer, template, args.all_turns, args.turn_newline, args.end_of_turn)
    vocab = len(tokenizer)
    dtype = dtype_for_vocab(vocab)
    logger.info("%d chat input files, tokenizer %s (%d tokens) -> %s, template: %s, %s, max length %s (%s)",
                len(files), args.tokenizer, vocab, dtype.name, template.source,
                "every assistant turn" if args.all_turns else "last assistant turn", args.max_length, args.overlong)
    stats: collections.Counter = collections.Counter()
    remove_leftovers([prefix])
    t0 = time.time()
    writer = IndexedDatasetWriter(prefix, dtype)
    bar = tqdm(unit="record", desc="chat examples", disable=args.no_progress, dynamic_ncols=True, mininterval=1.0)
    try:
        for location, record in itertools.islice(_chat_records(sources, iter_jsonl_objects), args.max_documents):
            stats["records"] += 1
            for example in encoder.examples(record, location):
                fitted, status = fit_to_length(example, args.max_length, args.overlong)
                stats[status] += 1
                if status != "kept" and stats[status] <= MAX_LOGGED:
                    logger.warning("%s: assistant turn %d has %d tokens (prompt %d + response %d), over --max-length "
                                   "%d: %s", location, example.turn, len(example), len(example.prompt_ids),
                                   len(example.response_ids), args.max_length, status)
                if fitted is None:
                    continue
                ids = np.asarray(fitted.prompt_ids + fitted.response_ids, dtype=np.int64)
                if int(ids.max()) >= vocab:
                    raise PreprocessError(f"{location}: assistant turn {example.turn} tokenized to id {int(ids.max())}, "
                                          f">= the tokenizer's size {vocab} ({args.tokenizer})")
                writer.add_document(ids, sequence_lengths=[len(fitted.prompt_ids), len(fitted.response_ids)])
                stats["examples"] += 1
                stats["prompt_tokens"] += len(fitted.prompt_ids)
                stats["response_tokens"] += len(fitted.response_ids)
                stats["max_token_id"] = max(stats["max_token_id"], int(ids.max()))
            bar.update(1)
        if stats["examples"] == 0:
            raise PreprocessError(f"no example written from --input {' '.join(args.input)} ({stats['records']} records, "
                                  f"{stats['dropped']} dropped over --max-length): nothing to train on, nothing written")
        writer.finalize()
    except ChatError as e:
        writer.abort()  # no half-written output under a temporary name either
        raise PreprocessError(str(e)) from None
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    elapsed = time.time() - t0
    tokens = stats["prompt_tokens"] + stats["response_tokens"]
    logger.info("%s: %d records -> %d examples, %d tokens (prompt %d, response %d); %d truncated, %d dropped "
                "(--max-length %s, --overlong %s); %.1f s, %.0f tokens/s", prefix, stats["records"], stats["examples"],
                tokens, stats["prompt_tokens"], stats["response_tokens"], stats["truncated"], stats["dropped"],
                args.max_length, args.overlong, elapsed, tokens / max(elapsed, 1e-9))
    summary = {
        "tool": "tools/preprocess_data.py", "tool_version": TOOL_VERSION, "fingerprint": digest, "format": "chat",
        "records": stats["records"], "documents": stats["examples"], "tokens": tokens,
        "prompt_tokens": stats["prompt_tokens"], "response_tokens": stats["response_tokens"],
        "truncated_examples": stats["truncated"], "dropped_examples": stats["dropped"],
        "max_length": args.max_length, "overlong": args.overlong,
        "dtype": dtype.name, "dtype_code": CODE_OF_DTYPE[dtype], "max_token_id": stats["max_token_id"],
        "chat_template": {"source": template.source, "sha256": template.sha256},
        "tokenizer": {"path": os.path.abspath(args.tokenizer), "size": vocab, "end_of_turn_token_id": encoder.end_of_turn_id,
                      "sha256": tok_hashes},
        "options": options(args), "workers": 1,
        "outputs": {"chat": {"prefix": prefix, "documents": stats["examples"], "tokens": tokens,
                             "max_token_id": stats["max_token_id"], "bin_bytes": os.path.getsize(bin_path(prefix)),
                             "idx_bytes": os.path.getsize(idx_path(prefix))}},
        "input_files": files, "elapsed_s": round(elapsed, 3), "wall_s": round(time.time() - started, 3),
        "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
    }
    write_text_atomic(summary_path(args.output_prefix), json.dumps(summary, indent=1))
    return summary


def _chat_records(sources, read) -> Iterator[Tuple[str, dict]]:
    for src in sources:
        yield from read(src.path)


def _count(counter: collections.Counter, key: str, batch: List[Record], lengths: np.ndarray) -> None:
    counter["documents"] += len(batch)
    counter["tokens"] += int(lengths.sum())
    for rec, n in zip(batch, lengths.tolist()):
        for kind, flagged in (("empty_documents", n == 0), ("invalid_documents", key in rec.invalid),
                              ("undecodable_documents", key in rec.undecodable)):
            if flagged:
                counter[kind] += 1
                if counter[kind] <= MAX_LOGGED:
                    logger.warning("%s: %s field %r%s", rec.location, kind.replace("_documents", ""), key,
                                   " (written as an empty document)" if kind != "undecodable_documents"
                                   else " (bytes replaced by U+FFFD)")


def _summary(args, files, tok_hashes, digest, dtype, vocab, eod, stats, elapsed, wall) -> Dict[str, object]:
    outputs = {}
    for key, s in stats.items():
        prefix = output_prefix(args.output_prefix, key)
        outputs[key] = {"prefix": prefix, "documents": s["documents"], "tokens": s["tokens"],
                        "empty_documents": s["empty_documents"], "invalid_documents": s["invalid_documents"],
                        "undecodable_documents": s["undecodable_documents"],
                        "max_token_id": s["max_token_id"] if "max_token_id" in s else None,
                        "bin_bytes": os.path.getsize(bin_path(prefix)), "idx_bytes": os.path.getsize(idx_path(prefix))}
        logger.info("%s: %d documents, %d tokens, %d empty, %d invalid, %d undecodable", prefix, s["documents"],
                    s["tokens"], s["empty_documents"], s["invalid_documents"], s["undecodable_documents"])
    docs = next(iter(stats.values()))["documents"]
    tokens = sum(s["tokens"] for s in stats.values())
    maxima = [o["max_token_id"] for o in outputs.values() if o["max_token_id"] is not None]
    logger.info("%d documents, %d tokens in %.1f s: %.0f documents/s, %.0f tokens/s", docs, tokens, elapsed,
                docs / max(elapsed, 1e-9), tokens / max(elapsed, 1e-9))
    return {
        "tool": "tools/preprocess_data.py", "tool_version": TOOL_VERSION, "fingerprint": digest,
        "documents": docs, "tokens": tokens, "dtype": dtype.name, "dtype_code": CODE_OF_DTYPE[dtype],
        "max_token_id": max(maxima) if maxima else None,
        "empty_documents": sum(s["empty_documents"] for s in stats.values()),
        "invalid_documents": sum(s["invalid_documents"] for s in stats.values()),
        "undecodable_documents": sum(s["undecodable_documents"] for s in stats.values()),
        "tokenizer": {"path": os.path.abspath(args.tokenizer), "size": vocab, "eod_token_id": eod, "sha256": tok_hashes},
        "options": options(args), "workers": args.workers, "outputs": outputs, "input_files": files,
        "elapsed_s": round(elapsed, 3), "wall_s": round(wall, 3),
        "documents_per_s": round(docs / max(elapsed, 1e-9), 1), "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    from megadfm.data.chat import ChatError
    from megadfm.data.sources import InputError
    from megadfm.data.tokenizer import TokenizerError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except (InputError, PreprocessError, TokenizerError, ChatError) as e:  # bad input: its message, not a traceback
        print(f"preprocess_data.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
