//! Reward functions for oxrl. No libtorch dependency.
#![warn(missing_docs)]
