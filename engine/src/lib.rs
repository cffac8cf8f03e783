//! The oxrl engine.
#![warn(missing_docs)]
