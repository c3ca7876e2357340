"""The AR -> DFM experiment's block-diffusion comparison: full bidirectional DFM (``dfm_from_ar``) against block
DFM (``dfm_from_ar_block``, dfm.mode: block), both from the same converted AR model, same data, seed and steps.

Reported per run: final validation loss, the ELBO bound (NLL per token; for the block model the sum over
blocks, BD3LM's bound), infill exact match and parse rate with ONE sampler both models can run
(``threshold-0.9-block16``: blocks of 16, exact), completion of held-out code (token accuracy of 16 greedy
tokens after the first 32 of a validation document, the AR model alongside), and sampling speed: new tokens per second at batch 1 and
16 against transformers' ``generate`` (KV cache) of the experiment's own AR model (the exported Qwen3),
greedy, EOS off, one thread, in the same process. The block model decodes with its exact prefix cache,
the full one without a cache (the exact sampler); both with the same threshold preset.

Block-mode infill sees the suffix only where it shares the current block: a block model attends to
nothing after its block (docs/BLOCK_DIFFUSION.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Dict, List

BLOCK_SIZE = 16
BLOCK_RUN = ("dfm_from_ar_block", {"dfm.mode": "block", "dfm.block_size": BLOCK_SIZE})
SAMPLER = "threshold-0.9-block16"
COMPARED = ("dfm_from_ar", BLOCK_RUN[0])


def sampling_speed(work: str, run_dirs: Dict[str, str], new_tokens: int, batch_sizes: List[int],
                   log: Callable[[str], None]) -> Dict[str, Dict[str, float]]:
    """{setting: {"b<n>": tokens/s}} for the AR baseline and each compared run; cached in WORK/eval_block/speed.json."""
    path = os.path.join(work, "eval_block", "speed.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    import torch
    from transformers import Qwen3ForCausalLM

    from bench.bench_sampler import code_prompts
    from megadfm.data.tokenizer import load_tokenizer
    from megadfm.dfm.model_loading import load_model_dir
    from megadfm.dfm.sampler import generate
    from megadfm.eval.presets import sampler_from_preset
    from megadfm.io_utils import write_text_atomic

    torch.set_num_threads(1)
    log(f"speed: {new_tokens} new tokens at batch {batch_sizes}, greedy, EOS off, 1 thread")
    ar = Qwen3ForCausalLM.from_pretrained(os.path.join(work, "ar_qwen3"), local_files_only=True).eval()
    results: Dict[str, Dict[str, float]] = {"ar_generate": {}}
    models = {name: load_model_dir(run_dirs[name], torch.device("cpu"), "float32") for name in COMPARED}
    run_cfg = models[COMPARED[0]][1]
    tokenizer = load_tokenizer(run_cfg.data.tokenizer, mask_token_id=run_cfg.model.mask_token_id)
    for bsz in batch_sizes:
        prompts = code_prompts(tokenizer, bsz, 16)
        ids = torch.tensor(prompts)
        with torch.inference_mode():
            start = time.perf_counter()
            ar.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                        do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)
            results["ar_generate"][f"b{bsz}"] = bsz * new_tokens / (time.perf_counter() - start)
        for name, (model, cfg) in models.items():
            cache = "prefix" if cfg.dfm.mode == "block" else "none"
            sampler = dataclasses.replace(sampler_from_preset(SAMPLER, cache=cache), eos_token_id=None)
            out = generate(model, prompts, new_tokens, sampler, cfg.dfm)
            results.setdefault(name, {})[f"b{bsz}"] = out.tokens_per_second
            results[name][f"b{bsz}_steps"] = out.steps
        log(f"speed b{bsz}: " + ", ".join(f"{k} {v[f'b{bsz}']:.1f} tok/s" for k, v in results.items()))
    write_text_atomic(path, json.dumps(results, indent=1) + "\n")
    return results


COMPLETION = (32, 16)
"""Held-out completion: the first 32 tokens of a validation document as the prompt, the next 16 to continue."""


def completion(work: str, run_dirs: Dict[str, str], documents: int, log: Callable[[str], None]) -> Dict[str, float]:
    """{model: token accuracy} of greedy completions of held-out code (validation documents of the runs' data), for
    each compared run (the comparison sampler, EOS off) and the AR model (transformers generate); cached in
    WORK/eval_block/completion.json."""
    path = os.path.join(work, "eval_block", "completion.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    import torch
    from transformers import Qwen3ForCausalLM

    from megadfm.dfm.model_loading import load_model_dir
    from megadfm.dfm.sampler import generate
    from megadfm.eval.heldout_data import heldout_documents
    from megadfm.eval.presets import sampler_from_preset
    from megadfm.io_utils import write_text_atomic

    prompt_len, new = COMPLETION
    models = {name: load_model_dir(run_dirs[name], torch.device("cpu"), "float32") for name in COMPARED}
    data = models[COMPARED[0]][1].data
    docs = heldout_documents(data.blend[0].prefix, data.split, "valid", seq_len=prompt_len + new,
                             max_documents=documents, min_tokens=prompt_len + new)
    prompts, targets = [d[:prompt_len] for d in docs], [d[prompt_len:] for d in docs]

    def accuracy(rows: List[List[int]]) -> float:
        pairs = [(a, b) for row, want in zip(rows, targets) for a, b in zip(row, want)]
        return sum(a == b for a, b in pairs) / (len(docs) * new)

    results: Dict[str, float] = {}
    for name, (model, cfg) in models.items():
        sampler = dataclasses.replace(sampler_from_preset(SAMPLER), eos_token_id=None)
        results[name] = accuracy(generate(model, prompts, new, sampler, cfg.dfm).tokens)
    ar = Qwen3ForCausalLM.from_pretrained(os.path.join(work, "ar_qwen3"), local_files_only=True).eval()
    with torch.inference_mode():
        ids = torch.tensor(prompts)
        out = ar.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    results["ar_generate"] = accuracy(out[:, prompt_len:].tolist())
    log(f"completion ({len(docs)} held-out documents, {new} tokens after {prompt_len}): "
        + ", ".join(f"{k} {v:.3f}" for k, v in results.items()))
    write_text_atomic(path, json.dumps(results, indent=1) + "\n")
    return results


def table(curves, evals: Dict[str, Dict], speed: Dict[str, Dict[str, float]], completions: Dict[str, float],
          batch_sizes: List[int], fmt: Callable, pct: Callable):
    """(headers, rows) of the comparison."""
    headers = ["run", "mode", "final val loss", "ELBO NLL/token", f"infill exact ({SAMPLER})", "infill parses",
               f"held-out completion token accuracy ({COMPLETION[1]} after {COMPLETION[0]})"]
    headers += [f"tok/s b{b} (x AR)" for b in batch_sizes]
    rows = []
    for name in COMPARED:
        infill, nll = evals[name]["infill"]["scores"], evals[name]["likelihood"].get("nelbo_per_token")
        row = [name, "block" if name == BLOCK_RUN[0] else "full", fmt(curves[name].final("loss")), fmt(nll),
               pct(infill["exact_match"]), pct(infill["parses"]), f"{completions[name]:.3f}"]
        for b in batch_sizes:
            rate, base = speed[name][f"b{b}"], speed["ar_generate"][f"b{b}"]
            row.append(f"{rate:.1f} ({rate / base:.2f}x, {speed[name][f'b{b}_steps']} steps)")
        rows.append(row)
    rows.append(["ar_generate (baseline)", "AR", "", "", "", "", f"{completions['ar_generate']:.3f}"]
                + [f"{speed['ar_generate'][f'b{b}']:.1f}" for b in batch_sizes])
    return headers, rows
