"""Scale: PyTorch's own tools wired to attachments — torchrun/DDP (:mod:`.distributed`), FSDP2
(:mod:`.fsdp`) and the meta-device big-model start (:mod:`.bigmodel`). Submodules load on import only."""
