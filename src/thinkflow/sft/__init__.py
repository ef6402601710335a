"""The ``sft`` stage: supervised fine-tuning on reasoning traces (gold, teacher, self), with provenance,
decontamination and packing. See ``thinkflow.sft.stage``."""
