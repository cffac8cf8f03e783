//! Parsing device and dtype names as users write them in configs and on the command line.

use tch::{Cuda, Device, Kind};

use crate::error::{Error, Result};

/// `cpu`, `cuda`, `cuda:N`, or `auto` (the first GPU if libtorch sees one, else the CPU).
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(Error::Invalid(format!(
                "unknown device {other:?} (cpu, cuda, cuda:N, auto)"
            ))),
        },
    }
}

fn cuda(index: usize) -> Result<Device> {
    let count = Cuda::device_count() as usize;
    if index < count {
        Ok(Device::Cuda(index))
    } else {
        Err(Error::Invalid(format!(
            "device cuda:{index} requested but libtorch sees {count} CUDA device(s)"
        )))
    }
}

/// The device the test suites put their models on: `OXRL_TEST_DEVICE` parsed like
/// `model.device` (the CPU when unset), so the same tests check CUDA on a GPU host.
pub fn test_device() -> Device {
    match std::env::var("OXRL_TEST_DEVICE") {
        Ok(name) => parse_device(&name).expect("OXRL_TEST_DEVICE"),
        Err(_) => Device::Cpu,
    }
}

/// `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`.
pub fn parse_kind(name: &str) -> Result<Kind> {
    match name {
        "f32" | "float32" | "float" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" | "half" => Ok(Kind::Half),
        other => Err(Error::Invalid(format!(
            "unknown dtype {other:?} (f32, bf16, f16)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_names_are_explained() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_kind("bf16").unwrap(), Kind::BFloat16);
        assert!(parse_device("tpu")
            .unwrap_err()
            .to_string()
            .contains("cpu, cuda"));
        assert!(parse_kind("int8")
            .unwrap_err()
            .to_string()
            .contains("f32, bf16, f16"));
        if Cuda::device_count() == 0 {
            assert!(parse_device("cuda:0")
                .unwrap_err()
                .to_string()
                .contains("0 CUDA"));
        }
    }
}
