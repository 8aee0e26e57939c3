"""Parameter-efficient methods that add parameters or wrap the model (LoRA through peft; adapters,
prompt tuning, LST and READ to come). Each exports its weights in the base model's layout."""
