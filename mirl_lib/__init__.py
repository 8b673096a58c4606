"""mirl: lottery tickets in all-in-one image restoration (PromptIR, MIR-L)."""
from mirl_lib.config import Config, load_config
from mirl_lib.errors import MirlError
from mirl_lib.model import PromptIR, build_model

__all__ = ["Config", "MirlError", "PromptIR", "build_model", "load_config"]
