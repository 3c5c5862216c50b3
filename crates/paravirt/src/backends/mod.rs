//! Backends: each maps the API onto one vendor ABI.

pub mod native;
