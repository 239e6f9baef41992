//! llama2.c `tokenizer.bin`: loading, run.c's BPE encoding and decoding, and BPE training.
