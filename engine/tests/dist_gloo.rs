//! c10d through oxrl's shim: two ranks (threads of this process, each with its own Gloo
//! group and store connection) all-reduce, broadcast, gather and meet at barriers; a rank
//! that leaves or never comes is an error on the others within the timeout, not a hang.

use std::thread;
use std::time::{Duration, Instant};

use oxrl::dist::{ProcessGroup, ReduceOp, Rendezvous};
use tch::{Kind, Tensor};

/// A port free right now on the loopback.
fn free_port() -> u16 {
    oxrl::rollout::vllm::free_port().unwrap()
}

fn place(rank: usize, world_size: usize, port: u16) -> Rendezvous {
    Rendezvous {
        rank,
        world_size,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    }
}

/// Runs `f(rank, group)` on `world_size` threads that join one group; returns their results
/// by rank.
fn on_ranks<T: Send + 'static>(
    world_size: usize,
    timeout: Duration,
    f: impl Fn(usize, ProcessGroup) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let port = free_port();
    let ranks: Vec<_> = (0..world_size)
        .map(|rank| {
            let f = f.clone();
            thread::spawn(move || {
                let group = ProcessGroup::gloo(&place(rank, world_size, port), timeout)
                    .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
                assert_eq!((group.rank(), group.world_size()), (rank, world_size));
                f(rank, group)
            })
        })
        .collect();
    ranks.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn two_ranks_reduce_broadcast_gather_and_meet() {
    let results = on_ranks(2, Duration::from_secs(30), |rank, group| {
        let r = rank as f64;
        let sum = Tensor::full([3], r + 1.0, (Kind::Float, tch::Device::Cpu));
        group.all_reduce(&sum, ReduceOp::Sum).unwrap();
        let max = Tensor::from_slice(&[r, -r]);
        group.all_reduce(&max, ReduceOp::Max).unwrap();
        // Gradients of several shapes and dtypes: one flat bucket per run of one dtype.
        let grads = vec![
            Tensor::full([2, 3], r, (Kind::Float, tch::Device::Cpu)),
            Tensor::full([5], 10.0 * r, (Kind::Double, tch::Device::Cpu)),
            Tensor::full([4, 1], 100.0 * r, (Kind::Float, tch::Device::Cpu)),
        ];
        group.all_reduce_buckets(&grads, true).unwrap();
        let shared = Tensor::full([4], r + 7.0, (Kind::Float, tch::Device::Cpu));
        group.broadcast(&shared, 1).unwrap();
        let gathered = group.all_gather(&[r, r * 10.0]).unwrap();
        group.barrier().unwrap();
        (
            Vec::<f32>::try_from(&sum).unwrap(),
            Vec::<f64>::try_from(&max).unwrap(),
            grads
                .iter()
                .map(|g| g.mean(Kind::Double).double_value(&[]))
                .collect::<Vec<_>>(),
            Vec::<f32>::try_from(&shared).unwrap(),
            gathered,
        )
    });
    for (rank, (sum, max, grads, shared, gathered)) in results.into_iter().enumerate() {
        assert_eq!(sum, [3.0; 3], "rank {rank}: 1 + 2");
        assert_eq!(max, [1.0, 0.0], "rank {rank}");
        assert_eq!(
            grads,
            [0.5, 5.0, 50.0],
            "rank {rank}: means of 0 and 1, 0 and 10, 0 and 100"
        );
        assert_eq!(shared, [8.0; 4], "rank {rank}: rank 1's tensor");
        assert_eq!(gathered, [[0.0, 0.0], [1.0, 10.0]], "rank {rank}");
    }
}

#[test]
fn gathering_different_lengths_is_an_error_on_every_rank() {
    let errors = on_ranks(2, Duration::from_secs(30), |rank, group| {
        let values = vec![1.0; 2 + rank];
        group.all_gather(&values).unwrap_err().to_string()
    });
    for (rank, err) in errors.iter().enumerate() {
        assert!(err.contains(&format!("rank {rank}: all_gather")), "{err}");
        assert!(err.contains("every rank must pass as many"), "{err}");
    }
}

#[test]
fn a_rank_that_leaves_is_an_error_on_the_others_not_a_hang() {
    let timeout = Duration::from_secs(10);
    let results = on_ranks(2, timeout, move |rank, group| {
        group.barrier().unwrap();
        if rank == 1 {
            drop(group); // as a killed process: its connections close
            return None;
        }
        let start = Instant::now();
        let t = Tensor::ones([8], (Kind::Float, tch::Device::Cpu));
        let err = group.all_reduce(&t, ReduceOp::Sum).unwrap_err().to_string();
        Some((err, start.elapsed()))
    });
    let (err, waited) = results[0].clone().expect("rank 0 reports");
    assert!(err.starts_with("rank 0: all_reduce failed"), "{err}");
    assert!(
        waited <= timeout + Duration::from_secs(2),
        "took {waited:?}"
    );
}

#[test]
fn ranks_that_never_meet_time_out_naming_the_store() {
    let port = free_port();
    let start = Instant::now();
    let err = ProcessGroup::gloo(&place(0, 2, port), Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("2 ranks did not meet at 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn ranks_started_with_different_world_sizes_are_told_so() {
    let port = free_port();
    let ranks: Vec<_> = [(0, 2), (1, 3)]
        .into_iter()
        .map(|(rank, world_size)| {
            thread::spawn(move || {
                let at = place(rank, world_size, port);
                ProcessGroup::gloo(&at, Duration::from_secs(20)).map(|_| ())
            })
        })
        .collect();
    let start = Instant::now();
    for (rank, h) in ranks.into_iter().enumerate() {
        let err = h.join().unwrap().unwrap_err().to_string();
        assert!(
            err.contains("the ranks disagree on WORLD_SIZE"),
            "rank {rank}: {err}"
        );
        assert!(err.contains("has 2") && err.contains("has 3"), "{err}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "named, not timed out"
    );
}

#[test]
fn two_processes_with_one_rank_are_told_so() {
    let port = free_port();
    let ranks: Vec<_> = [0, 1, 1]
        .into_iter()
        .map(|rank| {
            thread::spawn(move || {
                let group = ProcessGroup::gloo(&place(rank, 2, port), Duration::from_secs(20))?;
                group.barrier()
            })
        })
        .collect();
    let results: Vec<_> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("two processes were started with RANK=1"),
        "{errors:?}"
    );
    assert!(results[0].is_ok(), "rank 0 meets the first rank 1");
}

#[test]
fn two_ranks_gather_bytes_of_different_lengths() {
    let results = on_ranks(2, Duration::from_secs(30), |rank, group| {
        let mine = "line\n".repeat(rank * 3 + 1);
        let all = group.gather_bytes(mine.as_bytes()).unwrap();
        let empty = group.gather_bytes(b"").unwrap();
        (all, empty)
    });
    for (all, empty) in results {
        assert_eq!(all, [b"line\n".to_vec(), b"line\n".repeat(4)]);
        assert_eq!(empty, [Vec::<u8>::new(), Vec::new()]);
    }
}
