//! CPU inference with a KV cache and llama2.c run.c-compatible sampling.
