"""QLoRA's base model: weights quantised to 4 bits by bitsandbytes as they load (NF4 or FP4, block-wise), frozen;
LoRA adapters then train on top in the compute precision (Dettmers et al., 2023). bitsandbytes runs its 4-bit
matmuls on CUDA and, from 0.46 on, on CPUs (slower: they de-quantise per block)."""

from __future__ import annotations

from alignkit import AlignkitError
from alignkit.models.load import resolve


def load_4bit(path: str, quant_type: str, compute_dtype, trust_remote_code: bool = False,
              gradient_checkpointing: bool = False):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise AlignkitError("model.load_in_4bit needs bitsandbytes (pip install 'alignkit[quant]')") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                      bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(path), quantization_config=quantization,
                                                     dtype=compute_dtype, trust_remote_code=trust_remote_code,
                                                     use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise AlignkitError(f"model '{path}': cannot load in 4 bits: {str(e).splitlines()[0][:200]}") from None
    # norms and the head in the compute precision, input gradients on (for LoRA under checkpointing)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
