"""The transformers modeling and config code copied into every HF export (trust_remote_code).

These files must stay self-contained (torch + transformers only): the exported folder has no
megadfm. tools/convert_megadfm_to_hf.py copies them next to config.json and names them in its
``auto_map``; tests import them from here to compare with megadfm's model.
"""

# modeling_megadfm imports generation_megadfm (diffusion_generate), which imports block_generation_megadfm (block
# diffusion) and cache_generation_megadfm (full DFM's prefix / dual caches), relatively, so transformers loads them
# from the folder
CODE_FILES = ("configuration_megadfm.py", "modeling_megadfm.py", "generation_megadfm.py", "block_generation_megadfm.py",
              "cache_generation_megadfm.py")
MODEL_TYPE = "megadfm_qwen3"
AUTO_MAP = {
    "AutoConfig": "configuration_megadfm.MegaDFMQwen3Config",
    "AutoModel": "modeling_megadfm.MegaDFMQwen3Model",
    "AutoModelForMaskedLM": "modeling_megadfm.MegaDFMQwen3ForMaskedLM",
}
ARCHITECTURE = "MegaDFMQwen3ForMaskedLM"
