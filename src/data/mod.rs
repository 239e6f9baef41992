//! Token data: memory-mapped uint16 token files, the built-in story corpus, TinyStories
//! download and tokenization.

pub mod tokens;

pub use tokens::TokenData;
