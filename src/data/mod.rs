//! Token data: memory-mapped uint16 token files, the built-in story corpus, TinyStories
//! download and tokenization.

pub mod corpus;
pub mod download;
pub mod info;
pub mod tokenize;
pub mod tokens;

pub use tokens::TokenData;
