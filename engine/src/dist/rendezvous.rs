//! Where and as whom a process joins a job: the variables torchrun and Slurm launchers set
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`).

use crate::error::{Error, Result};

/// One process's place in a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// How many processes the job has.
    pub world_size: usize,
    /// The rank among this machine's processes: which local device it takes.
    pub local_rank: usize,
    /// The host rank 0 runs on (it serves the rendezvous store).
    pub master_addr: String,
    /// The store's TCP port.
    pub master_port: u16,
}

impl Rendezvous {
    /// Read from the environment; `None` when `WORLD_SIZE` is unset (a single process).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `var`. Every problem names
    /// the variable: a missing or unparsable one, a rank outside the world.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let number = |name: &str, value: Option<String>| -> Result<usize> {
            let value = value
                .ok_or_else(|| Error::Invalid(format!("WORLD_SIZE is set but {name} is not")))?;
            value.trim().parse().map_err(|_| {
                Error::Invalid(format!("{name}={value:?} is not a non-negative integer"))
            })
        };
        let world_size = number("WORLD_SIZE", Some(world))?;
        let rank = number("RANK", var("RANK"))?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        if world_size == 0 || rank >= world_size {
            return Err(Error::Invalid(format!(
                "RANK={rank} is not below WORLD_SIZE={world_size}"
            )));
        }
        let master_port = var("MASTER_PORT")
            .ok_or_else(|| Error::Invalid("WORLD_SIZE is set but MASTER_PORT is not".into()))?;
        let master_port = master_port.trim().parse().map_err(|_| {
            Error::Invalid(format!("MASTER_PORT={master_port:?} is not a TCP port"))
        })?;
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            master_port,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Option<Rendezvous>> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Rendezvous::from_vars(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn torchrun_variables_are_read_and_checked_by_name() {
        assert_eq!(read(&[]).unwrap(), None, "no WORLD_SIZE: one process");
        let job = read(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            job,
            Rendezvous {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                master_addr: "node0".into(),
                master_port: 29500
            }
        );
        let bad = [
            (
                vec![("WORLD_SIZE", "2"), ("MASTER_PORT", "1")],
                "RANK is not",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")],
                "RANK=2 is not below WORLD_SIZE=2",
            ),
            (
                vec![("WORLD_SIZE", "two"), ("RANK", "0")],
                "WORLD_SIZE=\"two\"",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "0")],
                "MASTER_PORT is not",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "99999")],
                "MASTER_PORT=\"99999\"",
            ),
        ];
        for (vars, want) in bad {
            let err = read(&vars).unwrap_err().to_string();
            assert!(err.contains(want), "{vars:?}: {err}");
        }
    }
}
