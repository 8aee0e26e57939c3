"""Parameter-efficient methods that add parameters or wrap the model: LoRA, prompt tuning and IA3
through peft, Houlsby adapters, LST and READ. Each exports its weights in the base model's layout
and keeps its own tensors apart."""
