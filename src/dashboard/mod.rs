//! The live terminal dashboard and PNG plots of training logs.
