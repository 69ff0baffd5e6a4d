"""Networks: read KataGo model files (versions 3–17) and describe them."""

from katapool.models.desc import ModelDesc, load_model
from katapool.models.summary import parameter_count, summarize

__all__ = ["ModelDesc", "load_model", "parameter_count", "summarize"]
