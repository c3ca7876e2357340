"""HF Qwen3 <-> megadfm conversion: one declarative name table (name_map.py) turned into one plan
(plan.py), streamed by the tools (hf_import.py, export.py) or applied in memory (in_memory.py)."""

from megadfm.conversion.hf_config import hf_config_from_model_config, model_config_from_hf
from megadfm.conversion.in_memory import hf_to_megadfm_state_dict, megadfm_to_hf_state_dict
from megadfm.conversion.name_map import HF_ONLY, MEGADFM_ONLY, NAME_MAP, ConversionError

__all__ = ["HF_ONLY", "MEGADFM_ONLY", "NAME_MAP", "ConversionError", "hf_config_from_model_config", "hf_to_megadfm_state_dict",
           "megadfm_to_hf_state_dict", "model_config_from_hf"]
