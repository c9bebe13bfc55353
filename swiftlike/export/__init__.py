"""`wb export`: a checkpoint leaves the workbench in a form the user's serving stack loads.

stream.py LoRA / rsLoRA / DoRA / QLoRA merges read and written shard by shard (memory: one output shard, not the model),
          into Hugging Face shards or GGUF
merge.py  the same merges in memory, for what cannot stream (reward heads, VL models, quantized exports)
write.py  the Hugging Face directory: weights, config, generation stop tokens, tokenizer with its chat template,
          args.json, model card; written atomically
quantize.py  bitsandbytes (NF4, int8) and torchao (int4, int8) weights that transformers reloads as written
gguf.py   GGUF (f16, q8_0) for Qwen3, Qwen2 and Llama-3/3.x with llama.cpp's tokenizer metadata, and an Ollama
          Modelfile
"""
from .merge import merged_model, trained_on_4bit
from .stream import merged_tensors, nf4_weights, parse_size, shards_of, stream_merge, stream_plan, tensor_shapes
from .write import (atomic_directory, model_card, prepare_output, renders_as, with_chat_template, write_config,
                    write_hf, write_metadata)

__all__ = ["atomic_directory", "merged_model", "merged_tensors", "model_card", "nf4_weights", "parse_size",
           "prepare_output", "renders_as", "shards_of", "stream_merge", "stream_plan", "tensor_shapes",
           "trained_on_4bit", "with_chat_template", "write_config", "write_hf", "write_metadata"]
