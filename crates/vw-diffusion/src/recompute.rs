//! Gradients through a *frozen* Cosmos DiT by block-level recomputation (gradient checkpointing),
//! for training something that feeds the DiT residuals (a ControlNet-style branch) at full video size.
//!
//! candle's autograd keeps every intermediate of the graph until `backward`, which at the 2B shape
//! (37 440 tokens, 28 blocks) is far beyond one GPU. Here the forward runs block by block on detached
//! tensors and keeps only each block's input hidden state; the backward then walks the blocks in
//! reverse, recomputing block i from a `Var` holding its stored input and taking the vector-Jacobian
//! product with the incoming gradient. The DiT's weights get no gradient (they are frozen), and the
//! walk stops at the first block that receives a residual. The result is exact: the same gradients
//! as plain autograd through [`CosmosTransformer3DModel::forward_with_residuals`], for the price of
//! one extra forward of the blocks after the first residual.

use crate::dit::{CosmosTransformer3DModel, DitInput, DitState};
use crate::{Error, Result};
use candle_core::{Tensor, Var};

/// What [`CosmosTransformer3DModel::residual_grads`] returns.
#[derive(Debug, Clone)]
pub struct ResidualGrads {
    /// The loss value (detached scalar, as the loss function returned it).
    pub loss: Tensor,
    /// d loss / d residual, one per residual in the order given, each in its residual's dtype.
    pub grads: Vec<Tensor>,
}

fn detached_state(st: &DitState) -> DitState {
    DitState {
        temb: st.temb.detach(),
        embedded_timestep: st.embedded_timestep.detach(),
        rope: (st.rope.0.detach(), st.rope.1.detach()),
        extra_pos_emb: st.extra_pos_emb.as_ref().map(Tensor::detach),
        context: st.context.detach(),
        context_mask: st.context_mask.as_ref().map(Tensor::detach),
        ..st.clone()
    }
}

/// Gradient of `loss` w.r.t. `x`, zeros when the loss does not reach it.
fn grad_of(loss: &Tensor, x: &Var) -> Result<Tensor> {
    let grads = loss.backward()?;
    match grads.get(x.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => Ok(x.as_tensor().zeros_like()?),
    }
}

impl CosmosTransformer3DModel {
    /// The loss `loss_fn(DiT output)` of a forward with control residuals, and its gradients w.r.t.
    /// those residuals, by block-level recomputation (see the module doc). `residuals` are
    /// `(block index, (B, N, D))` as in [`CosmosTransformer3DModel::forward_with_residuals`]; they
    /// are used detached. `loss_fn` maps the output (B, out_channels, T, H, W) to a scalar.
    ///
    /// The caller turns the gradients into parameter gradients of whatever produced the residuals
    /// with the surrogate `sum_i (residual_i * grad_i).sum()`, whose gradient is exactly the chain
    /// rule's. Build the DiT from plain tensors (not `Var`s): weights that are variables would get
    /// gradients computed and thrown away. Memory: one (B, N, D) hidden state per block after the
    /// first residual, plus one block's autograd graph at a time.
    pub fn residual_grads<F>(&self, inp: &DitInput, residuals: &[(usize, Tensor)], loss_fn: F) -> Result<ResidualGrads>
    where
        F: FnOnce(&Tensor) -> Result<Tensor>,
    {
        let blocks = self.blocks();
        let n = blocks.len();
        if let Some((i, _)) = residuals.iter().find(|(i, _)| *i >= n) {
            return Err(Error::Invalid(format!("control residual after block {i}, but the DiT has {n} blocks")));
        }
        let first = residuals.iter().map(|(i, _)| *i).min();
        let (x, st) = self.prepare(inp)?;
        let st = detached_state(&st);
        let added =
            residuals.iter().map(|(i, r)| Ok((*i, r.detach().to_dtype(self.dtype())?))).collect::<Result<Vec<_>>>()?;

        // Forward, keeping the inputs of the blocks the backward has to go through.
        let mut x = x.detach();
        let mut saved: Vec<Option<Tensor>> = vec![None; n];
        for (i, block) in blocks.iter().enumerate() {
            if first.is_some_and(|f| i > f) {
                saved[i] = Some(x.clone());
            }
            x = block.forward(&x, &st)?.detach();
            for (_, r) in added.iter().filter(|(j, _)| *j == i) {
                x = (x + r)?;
            }
        }

        // Output layer and loss, with autograd from the last hidden state.
        let x_var = Var::from_tensor(&x)?;
        drop(x);
        let loss = loss_fn(&self.finish(x_var.as_tensor(), &st)?)?;
        let Some(first) = first else {
            return Ok(ResidualGrads { loss: loss.detach(), grads: Vec::new() });
        };
        let mut g = grad_of(&loss, &x_var)?;
        drop(x_var);

        // Backward block by block: x_{i+1} = block_i(x_i) + r_i, so d/dr_i = d/dx_{i+1}.
        let mut grads: Vec<Option<Tensor>> = vec![None; residuals.len()];
        for i in (first..n).rev() {
            for (k, (j, r)) in residuals.iter().enumerate() {
                if *j == i {
                    grads[k] = Some(g.to_dtype(r.dtype())?);
                }
            }
            if i == first {
                break;
            }
            let x_in = saved[i].take().ok_or_else(|| Error::Invalid(format!("block {i}: input not saved")))?;
            let x_var = Var::from_tensor(&x_in)?;
            drop(x_in);
            let out = blocks[i].forward(x_var.as_tensor(), &st)?;
            // The vector-Jacobian product as the gradient of <out, g>.
            g = grad_of(&(out * &g)?.sum_all()?, &x_var)?;
        }
        let grads = grads
            .into_iter()
            .map(|g| g.ok_or_else(|| Error::Invalid("a residual got no gradient".into())))
            .collect::<Result<Vec<_>>>()?;
        Ok(ResidualGrads { loss: loss.detach(), grads })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dit::CosmosTransformerConfig;
    use candle_core::{DType, Device, D};

    /// Relative error max|a - b| / max|b|.
    fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
        let d = (a - b)?.abs()?.flatten_all()?.max(D::Minus1)?.to_scalar::<f32>()?;
        let m = b.abs()?.flatten_all()?.max(D::Minus1)?.to_scalar::<f32>()?;
        Ok(d / m.max(1e-30))
    }

    #[test]
    fn recomputed_residual_grads_equal_plain_autograd() -> Result<()> {
        let dev = Device::Cpu;
        let rnd =
            |seed: u64, shape: &[usize]| -> Result<Tensor> { Ok(vw_tensor_kernels::random_tensor(seed, shape, &dev)?) };
        let cfg = CosmosTransformerConfig { num_layers: 4, ..CosmosTransformerConfig::tiny() };
        let vm = candle_nn::VarMap::new();
        let dit = CosmosTransformer3DModel::new(&cfg, candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        // Seeded weights (candle's CPU generator cannot be seeded); the norm weights stay at 1 + noise.
        let mut named: Vec<_> =
            vm.data().lock().map_err(|_| Error::Invalid("poisoned".into()))?.clone().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (name, v)) in named.iter().enumerate() {
            let r = (rnd(100 + i as u64, v.dims())? * 0.3)?;
            v.set(&if name.contains("norm_") { (r + 1.0)? } else { r })?;
        }
        let (b, t, h, w) = (2, 3, 4, 6);
        let lat = rnd(1, &[b, cfg.in_channels - 1, t, h, w])?;
        let cond = Tensor::zeros((b, 1, t, h, w), DType::F32, &dev)?;
        let ts = Tensor::new(&[0.3f32, 0.7], &dev)?;
        let text = rnd(2, &[b, 5, cfg.text_embed_dim])?;
        let inp = DitInput {
            latents: &lat,
            timestep: &ts,
            text: &text,
            text_mask: None,
            condition_mask: Some(&cond),
            padding_mask: None,
            fps: Some(16.0),
        };
        let tokens = t * (h / 2) * (w / 2);
        let d = cfg.hidden_size();
        // Residuals after blocks 1 and 2 (two at block 2), none after 0 or 3.
        let vars = [1usize, 2, 2]
            .iter()
            .enumerate()
            .map(|(k, &i)| Ok((i, Var::from_tensor(&(rnd(10 + k as u64, &[b, tokens, d])? * 0.1)?)?)))
            .collect::<Result<Vec<_>>>()?;
        let residuals: Vec<(usize, Tensor)> = vars.iter().map(|(i, v)| (*i, v.as_tensor().clone())).collect();
        let target = rnd(3, &[b, cfg.out_channels, t, h, w])?;
        let loss_fn = |v: &Tensor| -> Result<Tensor> { Ok((v - &target)?.sqr()?.mean_all()?) };

        let plain = loss_fn(&dit.forward_with_residuals(&inp, &residuals)?)?;
        let plain_grads = plain.backward()?;
        let ck = dit.residual_grads(&inp, &residuals, loss_fn)?;
        assert_eq!(plain.to_scalar::<f32>()?, ck.loss.to_scalar::<f32>()?);
        for ((_, v), g) in vars.iter().zip(&ck.grads) {
            let want = plain_grads.get(v.as_tensor()).ok_or_else(|| Error::Invalid("no plain grad".into()))?;
            let e = rel_err(g, want)?;
            assert!(e <= 1e-5, "residual gradient relative error {e}");
        }
        Ok(())
    }
}
