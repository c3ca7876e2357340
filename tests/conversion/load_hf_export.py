"""Run in a fresh process: load exported HF folders offline and write their outputs.

    python load_hf_export.py INPUTS.pt OUTPUTS.pt FOLDER [FOLDER ...]

The network is off (any socket connect raises) and megadfm is unimportable, so the folder's own
modeling code, transformers and torch are all that can be used.
"""

import socket
import sys

import torch


def _refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")


socket.socket.connect = _refuse
socket.create_connection = _refuse
sys.modules["megadfm"] = None  # `import megadfm` now raises ImportError

from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, GenerationConfig  # noqa: E402


def main(inputs_path, out_path, *folders):
    inputs = torch.load(inputs_path)
    outputs = []
    for folder in folders:
        lm, info = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
        problems = {k: sorted(v) for k, v in info.items() if v}
        assert not problems, f"{folder}: loading problems {problems}"
        base = AutoModel.from_pretrained(folder, trust_remote_code=True)
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        gen = GenerationConfig.from_pretrained(folder)
        lm.eval()
        base.eval()
        with torch.no_grad():
            logits = lm(inputs["input_ids"], t=inputs["t"], attention_mask=inputs["attention_mask"]).logits
            hidden = base(inputs["input_ids"], t=inputs["t"], attention_mask=inputs["attention_mask"]).last_hidden_state
        outputs.append({"logits": logits, "hidden": hidden, "class": type(lm).__name__, "base_class": type(base).__name__,
                        "mask_token": tok.mask_token, "mask_token_id": tok.mask_token_id,
                        "gen_mask_token_id": gen.mask_token_id, "dfm_sampler": gen.dfm_sampler,
                        "dtype": str(lm.dtype)})
    torch.save(outputs, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
