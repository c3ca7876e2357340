"""The models an evaluation runs on, behind one small interface.

``DFMEvalModel``: any megadfm source -- a run directory, its ``checkpoints/`` or one step directory
(any ZeRO stage), a model folder, an init folder (no run config: the default DFM conventions, said in
the log), or a megadfm HF export -- sampled with :func:`megadfm.dfm.sampler.generate`.

``ARCausalLM``: a plain transformers causal LM folder (e.g. ``Qwen3ForCausalLM``), sampled with
transformers' ``generate`` and its KV cache: the autoregressive baseline on the same problems.

Both count what a score must be read with: forward passes of the model (NFE, counted by a forward
hook for AR models; the DFM sampler's own full-sequence and block-only counts, since a KV-cached block
forward does not go through the module's ``__call__``), new tokens (the prompt never counts; a row ends
at its first EOS) and the wall time of generation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from megadfm.config_base import to_dict
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.sampler_config import SamplerConfig

logger = logging.getLogger("megadfm.eval")


def weights_sha256(module: torch.nn.Module) -> str:
    """Identity of the weights: sha256 over the parameters' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class GenerationStats:
    nfe: int = 0
    nfe_full: int = 0           # forward passes over whole sequences
    nfe_block: int = 0          # forward passes over a block's columns only (a DFM sampler with a KV cache)
    new_tokens: int = 0
    seconds: float = 0.0
    calls: int = 0

    def as_dict(self) -> Dict[str, Any]:
        return {"nfe": self.nfe, "nfe_full": self.nfe_full, "nfe_block": self.nfe_block, "new_tokens": self.new_tokens,
                "seconds": round(self.seconds, 4), "generate_calls": self.calls,
                "tokens_per_s": self.new_tokens / self.seconds if self.seconds > 0 else None}


class _ForwardCounter:
    def __init__(self, module: torch.nn.Module):
        self.count = 0
        module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.count += 1


@dataclass
class EvalModel:
    """What every task sees. ``kind``: "dfm" | "ar"."""

    kind: str
    label: str
    tokenizer: Any
    identity: Dict[str, Any]
    sampler: SamplerConfig
    batch_size: int = 8
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    stats: GenerationStats = field(default_factory=GenerationStats)
    chat_template: Optional[str] = None  # chat mode: a Jinja template file; None: the tokenizer folder's own
    _chat: Any = field(default=None, repr=False)

    def encode(self, text: str) -> List[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def complete(self, prompts: Sequence[str], max_new_tokens: int) -> List[str]:
        """One completion per prompt (EOS ends a row)."""
        out: List[str] = []
        for i in range(0, len(prompts), self.batch_size):
            out += [self.decode(t) for t in self._generate([self.encode(p) for p in prompts[i:i + self.batch_size]],
                                                           [max_new_tokens] * len(prompts[i:i + self.batch_size]), None,
                                                           self.sampler)]
        return out

    def chat_encoder(self):
        """The chat template of this model's tokenizer folder (or ``chat_template``), loaded once."""
        if self._chat is None:
            from megadfm.data.chat import ChatEncoder, resolve_chat_template

            template = resolve_chat_template(self.identity["tokenizer"], self.tokenizer, self.chat_template)
            self._chat = ChatEncoder(self.tokenizer, template)
            logger.info("chat mode: %s (sha256 %s...), replies end at %s", template.source, template.sha256[:12],
                        self._chat.end_of_turn)
        return self._chat

    def chat_prompt_ids(self, message: str, system: Optional[str] = None) -> List[int]:
        """The ids a chat request is answered from: the generation prompt of [system?, user: message],
        rendered exactly as preprocess_data.py --chat renders a training example's prompt."""
        messages = ([{"role": "system", "content": system}] if system is not None else []) + \
            [{"role": "user", "content": message}]
        return self.chat_encoder().generation_prompt_ids(messages)

    def chat_complete(self, messages: Sequence[str], max_new_tokens: int,
                      system: Optional[str] = None) -> List[Tuple[str, bool]]:
        """``(reply, finished)`` per user message, through the chat template: each row stops at the
        end-of-turn token (``finished``: it did, within ``max_new_tokens``), and the reply is returned
        without it and without the template's empty think block."""
        from dataclasses import replace

        encoder = self.chat_encoder()
        sampler = replace(self.sampler, eos_token_id=encoder.end_of_turn_id)
        out: List[str] = []
        for i in range(0, len(messages), self.batch_size):
            chunk = messages[i:i + self.batch_size]
            rows = self._generate([self.chat_prompt_ids(m, system) for m in chunk], [max_new_tokens] * len(chunk), None,
                                  sampler)
            # a row that ends at EOS returns fewer tokens than its budget (EOS itself is not returned)
            out += [(encoder.reply(t), len(t) < max_new_tokens) for t in rows]
        return out

    def fill(self, items: Sequence[Tuple[str, str, int]]) -> List[str]:
        """Middles for (prefix, suffix, token budget) items. A DFM model sees the suffix (infill); an AR model
        completes the prefix alone (its fair counterpart; reported as ``infill_mode: prefix_only``)."""
        out: List[str] = []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i:i + self.batch_size]
            suffixes = [self.encode(s) for _, s, _ in chunk] if self.infill_mode == "suffix" else None
            out += [self.decode(t) for t in self._generate([self.encode(p) for p, _, _ in chunk], [n for _, _, n in chunk],
                                                           suffixes, self.sampler)]
        return out

    infill_mode = "suffix"

    def _generate(self, prompts: List[List[int]], budgets: List[int], suffixes: Optional[List[List[int]]],
                  sampler: SamplerConfig) -> List[List[int]]:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        """Everything that changes a score: the source's identity, the sampler, the infill mode."""
        return {"kind": self.kind, "label": self.label, "source": self.identity, "sampler": to_dict(self.sampler),
                "infill_mode": self.infill_mode, "batch_size": self.batch_size, "device": str(self.device)}


@dataclass
class DFMEvalModel(EvalModel):
    model: Any = None
    dfm: DFMConfig = field(default_factory=DFMConfig)
    pad_token_id: int = 0

    def _generate(self, prompts, budgets, suffixes, sampler):
        from megadfm.dfm.sampler import generate

        result = generate(self.model, prompts, budgets, sampler, self.dfm, suffixes=suffixes,
                          pad_token_id=self.pad_token_id,
                          generator=torch.Generator(device=self.device).manual_seed(sampler.seed + self.stats.calls))
        self.stats.nfe_full += result.nfe_full
        self.stats.nfe_block += result.nfe_block
        self.stats.nfe += result.nfe_full + result.nfe_block
        self.stats.new_tokens += sum(len(t) for t in result.tokens)
        self.stats.seconds += result.seconds
        self.stats.calls += 1
        return result.tokens


@dataclass
class ARCausalLM(EvalModel):
    model: Any = None
    pad_token_id: int = 0
    _counter: Any = None
    infill_mode = "prefix_only"

    def __post_init__(self) -> None:
        self._counter = _ForwardCounter(self.model)

    @torch.inference_mode()
    def _generate(self, prompts, budgets, suffixes, sampler):
        cfg = sampler
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):  # left padding: every row's next token is at the same column
            ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[b, width - len(p):] = 1
        torch.manual_seed(cfg.seed + self.stats.calls)
        before = self._counter.count
        start = time.perf_counter()
        sample = cfg.temperature > 0
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=max(budgets),
                                  do_sample=sample, temperature=cfg.temperature if sample else None,
                                  top_p=cfg.top_p if sample else None, top_k=cfg.top_k if sample and cfg.top_k else None,
                                  eos_token_id=cfg.eos_token_id, pad_token_id=self.pad_token_id, use_cache=True)
        self.stats.seconds += time.perf_counter() - start
        self.stats.nfe += self._counter.count - before
        self.stats.nfe_full += self._counter.count - before  # each AR step is one (KV-cached) forward
        self.stats.calls += 1
        rows = []
        for b, budget in enumerate(budgets):
            new = out[b, width:width + budget].tolist()
            if cfg.eos_token_id is not None and cfg.eos_token_id in new:
                new = new[: new.index(cfg.eos_token_id)]
            rows.append(new)
        self.stats.new_tokens += sum(len(r) for r in rows)
        return rows


# ---- loading -----------------------------------------------------------------------------------

def _device(name: Optional[str]) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_dfm(path: str, sampler: SamplerConfig, tokenizer: Optional[str] = None, device: Optional[str] = None,
             dtype: Optional[str] = None, batch_size: int = 8, label: Optional[str] = None) -> DFMEvalModel:
    """A DFM model from any megadfm source (see the module docstring)."""
    from megadfm.checkpoints.source import SourceError, open_source
    from megadfm.conversion.hf_export_reader import is_hf_export, load_hf_export
    from megadfm.data.tokenizer import load_tokenizer

    dev = _device(device)
    path = os.path.abspath(path)
    overrides = {"dtype": dtype} if dtype else {}
    if is_hf_export(path):
        model, mcfg, dfm = load_hf_export(path, **overrides)
        identity = {"path": path, "kind": "hf_export", "step": None}
        tok_dir, pad = tokenizer or path, None  # the export carries its tokenizer; pad from it below
    else:
        from megadfm.checkpoints.strict_load import load_source
        from megadfm.model.qwen3_dfm import Qwen3DFM

        source = open_source(path)
        run_data = None
        if source.run_config is not None:
            run_cfg = source.run_config
            mcfg, dfm, pad = run_cfg.model, run_cfg.dfm, run_cfg.data.pad_token_id
            if run_cfg.data.blend:  # the held-out split of what it was trained on (likelihood's default data)
                run_data = {"prefix": run_cfg.data.blend[0].prefix, "split": list(run_cfg.data.split)}
        else:  # an init folder: weights and shape only
            mcfg, dfm, pad = source.model_config, DFMConfig(), None
            logger.info("%s is an init folder without a run config: using the default DFM conventions (%s)", path, dfm)
        if dtype:
            mcfg.dtype = dtype
        model = Qwen3DFM(mcfg)
        load_source(model, source)
        identity = {"path": path, "kind": source.kind, "step": source.step, "run_data": run_data}
        tok_dir = tokenizer or source.tokenizer_dir
        if tok_dir is None:
            raise SourceError(f"{path}: no tokenizer folder recorded with this source; pass --tokenizer DIR")
    tok = load_tokenizer(tok_dir, mcfg.mask_token_id)
    if pad is None:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = model.to(dev).eval()
    identity["weights_sha256"] = weights_sha256(model)
    identity["tokenizer"] = os.path.abspath(tok_dir)
    identity["dfm"] = to_dict(dfm)
    return DFMEvalModel(kind="dfm", label=label or f"dfm:{os.path.basename(path)}", tokenizer=tok, identity=identity,
                        sampler=sampler, batch_size=batch_size, device=dev, model=model, dfm=dfm, pad_token_id=int(pad))


def load_ar(path: str, sampler: SamplerConfig, tokenizer: Optional[str] = None, device: Optional[str] = None,
            dtype: Optional[str] = None, batch_size: int = 8, label: Optional[str] = None) -> ARCausalLM:
    """A transformers causal LM folder, local files only."""
    from transformers import AutoModelForCausalLM

    from megadfm.data.tokenizer import load_tokenizer

    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: no config.json; an AR baseline is a transformers causal LM folder "
                                "(e.g. saved with Qwen3ForCausalLM.save_pretrained)")
    dev = _device(device)
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **kwargs).to(dev).eval()
    tok_dir = tokenizer or path
    tok = load_tokenizer(tok_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    identity = {"path": path, "kind": "hf_causal_lm", "step": None, "weights_sha256": weights_sha256(model),
                "tokenizer": os.path.abspath(tok_dir), "architecture": type(model).__name__}
    return ARCausalLM(kind="ar", label=label or f"ar:{os.path.basename(path)}", tokenizer=tok, identity=identity,
                      sampler=sampler, batch_size=batch_size, device=dev, model=model, pad_token_id=int(pad))
