"""HF Qwen3 <-> megadfm conversion: one declarative name table (name_map.py), inverted for export."""

from megadfm.conversion.name_map import (HF_ONLY, MEGADFM_ONLY, NAME_MAP, ConversionError, hf_config_from_model_config,
                                         hf_to_megadfm_state_dict, megadfm_to_hf_state_dict, model_config_from_hf)

__all__ = ["HF_ONLY", "MEGADFM_ONLY", "NAME_MAP", "ConversionError", "hf_config_from_model_config", "hf_to_megadfm_state_dict",
           "megadfm_to_hf_state_dict", "model_config_from_hf"]
