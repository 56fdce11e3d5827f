"""The shared tuning loop, trainable selection, memory estimates, peft LoRA and its file layouts."""
