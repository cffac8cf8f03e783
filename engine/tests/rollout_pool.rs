//! The rollout worker pool: results equal direct generation, weight updates are versioned and
//! take effect between requests (copied or shared without a copy), staleness is bounded.

use std::collections::BTreeMap;
use std::sync::Arc;

use oxrl::device::test_device;
use oxrl::model::random::randomize;
use oxrl::rollout::pool::{share_weights, snapshot};
use oxrl::rollout::{
    generate_batch, GenerationRequest, RolloutPool, SamplingParams, Staleness, StopConditions,
    WeightUpdate, WorkerModel,
};
use oxrl::{Llama, ModelConfig};
use tch::nn::VarStore;

fn config() -> ModelConfig {
    serde_json::from_str(
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":40,"hidden_size":16,
            "intermediate_size":32,"num_hidden_layers":2,"num_attention_heads":2,
            "max_position_embeddings":64}"#,
    )
    .unwrap()
}

fn model(seed: i64) -> WorkerModel {
    let vs = VarStore::new(test_device());
    let model = Llama::new(&vs.root(), &config());
    randomize(&vs, seed, 0.5);
    WorkerModel { vs, model }
}

fn request(seed: u64) -> GenerationRequest {
    GenerationRequest {
        prompts: vec![vec![1, 2, 3], vec![4, 5]],
        n: 2,
        sampling: SamplingParams::default(),
        max_tokens: 8,
        stop: StopConditions::default(),
        seed,
        prompt_offset: 0,
    }
}

fn tokens(out: &[oxrl::rollout::Generated]) -> Vec<Vec<u32>> {
    out.iter().map(|g| g.tokens.clone()).collect()
}

#[test]
fn pool_results_match_direct_generation_and_updates_are_versioned() {
    let reference = model(1);
    let updated = model(2);
    let workers = vec![model(1), model(1)];
    let mut pool = RolloutPool::start(workers, 0, None);
    let before: Vec<u64> = (0..4).map(|s| pool.submit(request(s))).collect();
    let mut results = BTreeMap::new();
    for _ in 0..4 {
        let r = pool.recv().unwrap();
        results.insert(r.id, r);
    }
    for (seed, id) in before.iter().enumerate() {
        let r = &results[id];
        assert_eq!(r.policy_version, 0);
        let direct = generate_batch(&reference.model, &request(seed as u64), None).unwrap();
        assert_eq!(tokens(r.generated.as_ref().unwrap()), tokens(&direct));
    }

    pool.update_weights(WeightUpdate::Copy {
        version: 1,
        tensors: Arc::new(snapshot(&updated.vs)),
    });
    let after: Vec<u64> = (0..3).map(|s| pool.submit(request(s))).collect();
    for _ in &after {
        let r = pool.recv().unwrap();
        assert_eq!(
            r.policy_version, 1,
            "requests submitted after an update use it"
        );
        let seed = after.iter().position(|&id| id == r.id).unwrap() as u64;
        let direct = generate_batch(&updated.model, &request(seed), None).unwrap();
        assert_eq!(tokens(r.generated.as_ref().unwrap()), tokens(&direct));
    }
    pool.shutdown();
}

#[test]
fn shared_workers_see_learner_updates_without_a_copy() {
    let learner = model(3);
    let worker = model(4);
    share_weights(&learner.vs, &worker.vs).unwrap();
    let name = "model.layers.0.mlp.up_proj.weight";
    assert_eq!(
        learner.vs.variables()[name].data_ptr(),
        worker.vs.variables()[name].data_ptr()
    );
    let mut pool = RolloutPool::start(vec![worker], 0, None);

    // An optimizer step changes the learner's parameters in place.
    let other = model(5);
    tch::no_grad(|| {
        let src = other.vs.variables();
        for (n, mut v) in learner.vs.variables() {
            v.copy_(&src[&n]);
        }
    });
    pool.update_weights(WeightUpdate::Shared { version: 7 });
    pool.submit(request(0));
    let r = pool.recv().unwrap();
    assert_eq!(r.policy_version, 7);
    let direct = generate_batch(&other.model, &request(0), None).unwrap();
    assert_eq!(tokens(r.generated.as_ref().unwrap()), tokens(&direct));
}

#[test]
fn failures_come_back_as_results_and_staleness_is_bounded() {
    let mut pool = RolloutPool::start(vec![model(6)], 0, None);
    let mut bad = request(0);
    bad.prompts = vec![vec![]];
    pool.submit(bad);
    let err = pool.recv().unwrap().generated.unwrap_err().to_string();
    assert!(err.contains("prompt 0 has 0 tokens"), "{err}");

    let mut staleness = Staleness { max: 1, dropped: 0 };
    assert!(staleness.accept(4, 5, 8));
    assert!(!staleness.accept(3, 5, 8));
    assert_eq!(staleness.dropped, 8);
}
