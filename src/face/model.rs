//! Loading ONNX models into tract plans with concrete input shapes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::FaceError;

/// An optimised tract plan, shared between threads (each runs its own state).
pub(crate) type Plan = Arc<TypedSimplePlan>;
/// One thread's running state of a plan.
pub(crate) type State = TypedSimpleState;

fn model_err(path: &Path, e: impl std::fmt::Display) -> FaceError {
    FaceError::Model(format!("{}: {e}", path.display()))
}

/// Loads `path` with its first input fixed to `shape` (f32), optimised.
/// A missing, corrupt or incompatible file is an error, never a panic.
pub(crate) fn load(path: &Path, shape: &[usize]) -> Result<Plan, FaceError> {
    if !path.is_file() {
        return Err(model_err(path, "no such file (run scripts/fetch-assets.sh)"));
    }
    let build = || -> TractResult<Plan> {
        let model = tract_onnx::onnx()
            .model_for_path(path)?
            .with_input_fact(0, f32::fact(shape).into())?;
        free_outputs(model)?.into_optimized()?.into_runnable()
    };
    match catch_unwind(AssertUnwindSafe(build)) {
        Ok(Ok(plan)) => Ok(plan),
        Ok(Err(e)) => Err(model_err(path, format!("{e:#}"))),
        Err(_) => Err(model_err(
            path,
            "the model loader panicked (not a usable ONNX model)",
        )),
    }
}

/// `model` with its outputs' declared shapes forgotten, so that they are
/// inferred from the input's: a model exported for one image (the
/// detector declares its outputs at batch 1) then runs batches.
pub(crate) fn free_outputs(mut model: InferenceModel) -> TractResult<InferenceModel> {
    for i in 0..model.output_outlets()?.len() {
        model.set_output_fact(i, InferenceFact::default())?;
    }
    Ok(model)
}

/// A state to run `plan` on this thread.
pub(crate) fn spawn(plan: &Plan) -> Result<State, FaceError> {
    plan.spawn().map_err(|e| FaceError::Model(format!("{e:#}")))
}

/// One model output: its shape and its values, flat.
pub(crate) type Output = (Vec<usize>, Vec<f32>);

/// Runs one input through `state` (a CPU plan's state, or any runtime's:
/// the CUDA backend's too); returns every output as a flat f32 vector with
/// its shape.
pub(crate) fn run<S: tract_onnx::tract_core::runtime::State + ?Sized>(
    state: &mut S,
    shape: &[usize],
    data: &[f32],
) -> Result<Vec<Output>, FaceError> {
    let input = Tensor::from_shape(shape, data).map_err(|e| FaceError::Model(format!("{e:#}")))?;
    let outputs = catch_unwind(AssertUnwindSafe(|| state.run(tvec!(input.into_tvalue()))))
        .map_err(|_| FaceError::Model("the model panicked while running".into()))?
        .map_err(|e| FaceError::Model(format!("{e:#}")))?;
    outputs
        .iter()
        .map(|o| {
            let view = o
                .to_plain_array_view::<f32>()
                .map_err(|e| FaceError::BadOutput(format!("{e:#}")))?;
            Ok((view.shape().to_vec(), view.iter().copied().collect()))
        })
        .collect()
}

/// The batch sizes to build plans for from those asked for: positive,
/// sorted, unique, with 1 always among them (every batch can then run);
/// with a `max`, none above it and `max` itself among them (the largest
/// batch runs on a plan of its own size).
pub fn plan_sizes(asked: &[usize], max: Option<usize>) -> Vec<usize> {
    let cap = max.map_or(usize::MAX, |m| m.max(1));
    let mut sizes: Vec<usize> = asked.iter().copied().filter(|b| (1..=cap).contains(b)).collect();
    sizes.push(1);
    sizes.extend(max.map(|m| m.max(1)));
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// The shape of a run of `b` inputs of shape `frame`.
pub(crate) fn batch_shape(b: usize, frame: &[usize]) -> Vec<usize> {
    std::iter::once(b).chain(frame.iter().copied()).collect()
}

/// How a batch of `n` inputs runs on plans of `sizes` (sorted, holding 1):
/// pieces of the largest plan while more than it remain, then the smallest
/// plan that holds the rest. Each piece is (plan index, inputs it takes).
pub(crate) fn schedule(sizes: &[usize], n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let Some(&largest) = sizes.last() else {
        return out;
    };
    let mut rest = n;
    while rest > largest {
        out.push((sizes.len() - 1, largest));
        rest -= largest;
    }
    if rest > 0 {
        let index = sizes.iter().position(|b| *b >= rest).unwrap_or(sizes.len() - 1);
        out.push((index, rest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_runs_on_the_smallest_plan_that_holds_it() {
        let sizes = plan_sizes(&[8, 32, 64, 128, 256], None);
        assert_eq!(schedule(&sizes, 0), vec![]);
        assert_eq!(schedule(&sizes, 1), vec![(0, 1)]);
        assert_eq!(schedule(&sizes, 2), vec![(1, 2)]);
        assert_eq!(schedule(&sizes, 33), vec![(3, 33)]);
        assert_eq!(schedule(&sizes, 256), vec![(5, 256)]);
        // Beyond the largest plan: full pieces of it, then the rest.
        assert_eq!(schedule(&sizes, 600), vec![(5, 256), (5, 256), (4, 88)]);
        let total: usize = schedule(&sizes, 1000).iter().map(|p| p.1).sum();
        assert_eq!(total, 1000);
        // Only the plan of one: one face at a time.
        assert_eq!(schedule(&[1], 3), vec![(0, 1), (0, 1), (0, 1)]);
    }
}
