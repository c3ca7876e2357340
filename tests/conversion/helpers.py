"""Tiny HF Qwen3 folders on disk and offline loading of exports in a fresh process (conversion tests)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

import torch

from tests.conftest import REPO
from tests.model.tiny import hf_qwen3

QWEN_VOCAB, QWEN_MASK = 151936, 151669
LOADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "load_hf_export.py")


def tiny_hf_model(tie: bool = True, seed: int = 0):
    """A random Qwen3ForCausalLM with Qwen3's real vocabulary, hidden 32, 2 layers, head_dim 16.

    Same shape as the training tests' model (tests/training/engine_helpers.tiny_config with
    head_dim 16), so its converted init folder can start a real run."""
    return hf_qwen3(vocab_size=QWEN_VOCAB, hidden=32, layers=2, tie=tie, seed=seed)


def save_hf_folder(model, folder: str, layout: str = "single", tokenizer_dir: Optional[str] = None) -> str:
    """``layout``: single (model.safetensors), sharded (safetensors shards + index) or bin (pytorch_model.bin)."""
    if layout == "bin":
        model.config.save_pretrained(folder)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight")
        torch.save(state, os.path.join(folder, "pytorch_model.bin"))
    else:
        model.save_pretrained(folder, max_shard_size="4MB" if layout == "sharded" else "1GB")
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(folder, name))
    return folder


def config_json(folder: str) -> Dict:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


def write_config_json(folder: str, config: Dict) -> None:
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)


def sample_inputs(tokenizer, seed: int = 0):
    """Real code tokens, two rows (the second right-padded), a few <|mask|> tokens, t per row."""
    texts = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())"]
    rows = [tokenizer.encode(t) for t in texts]
    L = max(len(r) for r in rows)
    ids = torch.full((2, L), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(2, L, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = True
    g = torch.Generator().manual_seed(seed)
    masked = (torch.rand(ids.shape, generator=g) < 0.4) & mask
    masked[:, 0] = False
    ids[masked] = QWEN_MASK
    return {"input_ids": ids, "attention_mask": mask, "t": torch.tensor([0.3, 0.85])}


def load_exports_offline(folders: List[str], inputs: Dict[str, torch.Tensor], work: str) -> List[Dict[str, torch.Tensor]]:
    """Load each exported folder in ONE fresh Python process with the network off, megadfm made
    unimportable and an empty HF cache; return its logits / hidden states on ``inputs``."""
    inputs_path = os.path.join(work, "inputs.pt")
    out_path = os.path.join(work, "outputs.pt")
    torch.save(inputs, inputs_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=os.path.join(work, "hf_home"),
               OMP_NUM_THREADS=str(torch.get_num_threads()), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, LOADER, inputs_path, out_path, *folders], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"offline load failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return torch.load(out_path)


def tool(name: str):
    """tools/<name>.py imported as a module (to call its parse_args / main in-process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record_forward_calls(monkeypatch, sampler_module, seam: str = "make_forward"):
    """Wrap the in-tree sampler's forward factory ``seam`` so that every ``hidden_for`` call is recorded as
    (x, rows, t, targets, block, hidden, target, (nfe_full, nfe_block, rows) after the call), all cloned: the
    replay tests run the same calls through the exported folder's forward. Returns (the list of calls, a
    function that puts the real factory back)."""
    calls: List[tuple] = []
    real_make = getattr(sampler_module, seam)

    def recording(*args, **kwargs):
        forward = real_make(*args, **kwargs)
        inner = forward.hidden_for

        def hidden_for(x, rows, t, targets, block):
            hidden, target = inner(x, rows, t, targets, block)
            calls.append((x.clone(), rows.clone(), t.clone(), targets.clone(), block, hidden.clone(), target.clone(),
                          (forward.counts.nfe_full, forward.counts.nfe_block, forward.counts.rows)))
            return hidden, target

        forward.hidden_for = hidden_for
        return forward

    monkeypatch.setattr(sampler_module, seam, recording)
    return calls, lambda: monkeypatch.setattr(sampler_module, seam, real_make)
