"""Rebuild the official Qwen3 ``tokenizer.json`` offline from ``qwen.tiktoken`` (docs/FORMATS.md §2).

The tiktoken file lists the 151,643 regular byte-level BPE tokens with their ranks. The HF
tokenizer needs a vocabulary (token string -> id, where the string is the token's bytes mapped
through GPT-2's bytes-to-unicode table) and an ordered merge list. Merges are recovered by running
BPE on each token's bytes using only lower-ranked tokens: it stops with exactly two pieces, which
are the merge that forms the token. Merge order = rank of the merged token.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, List, Tuple

from megadfm.io_utils import give_default_permissions, sha256_file, write_bytes_atomic

QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
QWEN3_TOKENIZER_JSON_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
DASHSCOPE_WHEEL = "dashscope==2.0.2"
TIKTOKEN_MEMBER = "dashscope/resources/qwen.tiktoken"
NUM_REGULAR_TOKENS = 151643

PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# (content, special) in id order from 151643.
ADDED_TOKENS: List[Tuple[str, bool]] = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]


class TokenizerBuildError(RuntimeError):
    """The tokenizer could not be built; the message names the file and what was wrong."""


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def fetch_tiktoken(cache_dir: str) -> str:
    """Return the path of ``qwen.tiktoken``, extracting it from the dashscope wheel in ``cache_dir``.

    The wheel is downloaded with ``pip download --no-deps`` only when it is not already cached
    (a setup-time step; nothing at training time touches the network).
    """
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, "qwen.tiktoken")
    if os.path.isfile(target):
        return target
    wheels = [f for f in os.listdir(cache_dir) if f.startswith("dashscope-2.0.2") and f.endswith(".whl")]
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", DASHSCOPE_WHEEL, "-d", cache_dir]
        print(f"[build_qwen_tokenizer] fetching {DASHSCOPE_WHEEL} into {cache_dir}: {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise TokenizerBuildError(
                f"could not download {DASHSCOPE_WHEEL} into {cache_dir} (pip exit {proc.returncode}): {proc.stderr.strip()}\n"
                f"Download it on a machine with access to PyPI and pass --tiktoken PATH/qwen.tiktoken.")
        wheels = [f for f in os.listdir(cache_dir) if f.startswith("dashscope-2.0.2") and f.endswith(".whl")]
    wheel = os.path.join(cache_dir, sorted(wheels)[0])
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(TIKTOKEN_MEMBER)
        except KeyError:
            raise TokenizerBuildError(f"{wheel} has no member {TIKTOKEN_MEMBER}") from None
    write_bytes_atomic(target, data)
    return target


def read_tiktoken(path: str, verify_sha256: bool = True) -> Dict[bytes, int]:
    if not os.path.isfile(path):
        raise TokenizerBuildError(f"tiktoken file not found: {path}")
    if verify_sha256:
        digest = sha256_file(path)
        if digest != QWEN_TIKTOKEN_SHA256:
            raise TokenizerBuildError(
                f"{path}: sha256 {digest} does not match the Qwen tiktoken file ({QWEN_TIKTOKEN_SHA256})")
    ranks: Dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                token_b64, rank = line.split()
                ranks[base64.b64decode(token_b64)] = int(rank)
            except ValueError:
                raise TokenizerBuildError(f"{path}:{lineno}: expected 'base64 rank', got {line[:80]!r}") from None
    if len(ranks) != NUM_REGULAR_TOKENS or sorted(ranks.values()) != list(range(NUM_REGULAR_TOKENS)):
        raise TokenizerBuildError(f"{path}: expected ranks 0..{NUM_REGULAR_TOKENS - 1}, got {len(ranks)} tokens")
    return ranks


def _split_into_merge(ranks: Dict[bytes, int], token: bytes, max_rank: int) -> List[bytes]:
    """Run BPE on ``token`` with merges of rank < max_rank; returns the final pieces."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while True:
        best_idx, best_rank = -1, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best_rank is None or r < best_rank):
                best_idx, best_rank = i, r
        if best_rank is None:
            return parts
        parts = parts[:best_idx] + [parts[best_idx] + parts[best_idx + 1]] + parts[best_idx + 2:]


def build_tokenizer_object(ranks: Dict[bytes, int]):
    """Build the ``tokenizers.Tokenizer`` equal to the official Qwen3 tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    byte_encoder = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_encoder[x] for x in b)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        pieces = _split_into_merge(ranks, tok, rank)
        if len(pieces) != 2:
            raise TokenizerBuildError(f"token of rank {rank} ({tok!r}) does not split into one merge: {pieces}")
        merges.append((to_str(pieces[0]), to_str(pieces[1])))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_tokens([AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
                    for content, special in ADDED_TOKENS])
    # The Python binding of decoders.ByteLevel ignores its options, but Qwen's file records the
    # same three flags as the post-processor (the Rust type is shared): set them via the JSON form.
    spec = json.loads(tok.to_str())
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return Tokenizer.from_str(json.dumps(spec))


def build_tokenizer_json(tiktoken_path: str, out_path: str, verify_sha256: bool = True) -> str:
    """Write ``tokenizer.json`` (atomically) and return its sha256."""
    tok = build_tokenizer_object(read_tiktoken(tiktoken_path, verify_sha256))
    directory = os.path.dirname(os.path.abspath(out_path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tokenizer-", suffix=".json.tmp")
    os.close(fd)
    try:
        give_default_permissions(tmp)
        tok.save(tmp, pretty=True)
        digest = sha256_file(tmp)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest
