//! f32 master weights for mixed precision, where a bf16 parameter needs only half of one.
//!
//! A bf16 value is the top 16 bits of an f32. So the master of a bf16 parameter is kept as the
//! 16 bits the parameter lacks: f32 bits = `(param bits << 16) + low`, with `low` a signed
//! 16-bit offset. Writing a master rounds its bits to the nearest bf16 (`(bits + 0x8000) >> 16`)
//! and keeps the remainder, so the master is exact f32 and the parameter its round-to-nearest
//! copy: ties (low bits exactly `0x8000`, about 1 value in 65,536) go away from zero where
//! `to(bfloat16)` goes to even. 2 bytes per parameter instead of 4. f16 is not the top half of
//! an f32, so f16 parameters (and non-contiguous bf16 ones) keep a whole f32 copy.

use tch::{Kind, Tensor};

/// The master weight of one half-precision parameter.
pub(super) enum Master {
    /// A whole f32 copy.
    Full(Tensor),
    /// The low 16 bits of each f32 (int16, flat), beside the bf16 parameter's high 16.
    Low16(Tensor),
}

impl Master {
    /// The master of `param`, equal to it (no low bits yet).
    pub(super) fn new(param: &Tensor) -> Self {
        tch::no_grad(
            || match param.kind() == Kind::BFloat16 && param.is_contiguous() {
                true => Master::Low16(Tensor::zeros(
                    [param.numel() as i64],
                    (Kind::Int16, param.device()),
                )),
                false => Master::Full(param.detach().to_kind(Kind::Float)),
            },
        )
    }

    /// The master's f32 values over `[start, start + len)` of the flattened parameter: a view
    /// into a whole copy (updated in place), or the values composed from `param`'s bits and
    /// the low bits. Either way [`write`](Self::write) stores what the caller changed.
    pub(super) fn read(&self, param: &Tensor, start: i64, len: i64) -> Tensor {
        match self {
            Master::Full(master) => master.view([-1]).narrow(0, start, len),
            Master::Low16(low) => compose(
                &param.detach().view([-1]).narrow(0, start, len),
                &low.narrow(0, start, len),
            ),
        }
    }

    /// Stores f32 `values` as the master over `[start, start + len)` and refreshes that part of
    /// `param` (round to nearest into its dtype: what the next forward sees).
    pub(super) fn write(&mut self, param: &Tensor, start: i64, values: &Tensor) {
        let len = values.size()[0];
        let mut part = param.detach().view([-1]).narrow(0, start, len);
        match self {
            Master::Full(master) => {
                let mut own = master.view([-1]).narrow(0, start, len);
                if own.data_ptr() != values.data_ptr() {
                    own.copy_(values); // not the view `read` handed out
                }
                part.copy_(&own);
            }
            Master::Low16(low) => {
                let (high, rest) = split(values);
                part.view_dtype(Kind::Int16).copy_(&high);
                low.narrow(0, start, len).copy_(&rest);
            }
        }
    }

    /// The whole master in f32, shaped as `param`.
    pub(super) fn value(&self, param: &Tensor) -> Tensor {
        match self {
            Master::Full(master) => master.shallow_clone(),
            Master::Low16(_) => self
                .read(param, 0, param.numel() as i64)
                .view(param.size().as_slice()),
        }
    }

    /// Sets the master (and `param`, its rounded copy) to f32 `values` shaped as `param`.
    pub(super) fn set(&mut self, param: &Tensor, values: &Tensor) {
        tch::no_grad(|| match self {
            Master::Full(master) => {
                master.copy_(values);
                param.detach().copy_(values);
            }
            Master::Low16(_) => self.write(param, 0, &values.reshape([-1])),
        })
    }
}

/// f32 values from bf16 `high` and int16 `low` (flat, same length): bits `(high << 16) + low`,
/// in int32 arithmetic (libtorch shifts signed integers as unsigned and adds with wrap-around,
/// so the sum is the 32-bit pattern whatever the sign).
fn compose(high: &Tensor, low: &Tensor) -> Tensor {
    let high = high
        .view_dtype(Kind::Int16)
        .to_kind(Kind::Int)
        .bitwise_left_shift_tensor_scalar(16);
    (high + low.to_kind(Kind::Int)).view_dtype(Kind::Float)
}

/// f32 `values` as round-to-nearest bf16 bits (int16) and the signed remainder (int16):
/// `high = (bits + 0x8000) >> 16` (arithmetic shift: its low 16 bits are the bf16 pattern for
/// either sign), `low = bits - (high << 16)`, in [-0x8000, 0x8000).
fn split(values: &Tensor) -> (Tensor, Tensor) {
    let bits = values.contiguous().view_dtype(Kind::Int);
    let high = (&bits + 0x8000).bitwise_right_shift_tensor_scalar(16);
    let low = bits - high.bitwise_left_shift_tensor_scalar(16);
    (high.to_kind(Kind::Int16), low.to_kind(Kind::Int16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_bits_keep_the_f32_exactly_and_the_parameter_is_its_nearest_bf16() {
        tch::manual_seed(4);
        let values = Tensor::randn([100_000], (Kind::Float, tch::Device::Cpu)) * 10.0;
        let specials = Tensor::from_slice(&[0.0f32, -0.0, 1e-40, -3.0e38, 3.0e38, -1e-40]);
        values.narrow(0, 0, 6).copy_(&specials);
        let param = values.to_kind(Kind::BFloat16);
        let mut master = Master::new(&param);
        assert!(matches!(master, Master::Low16(_)));
        assert!(master.value(&param).equal(&param.to_kind(Kind::Float)));
        master.set(&param, &values);
        let back = master.value(&param);
        assert!(back
            .view_dtype(Kind::Int)
            .equal(&values.view_dtype(Kind::Int)));
        // Round to nearest: only exact ties (half an ulp) may differ from torch's ties-to-even.
        let rne = values.to_kind(Kind::BFloat16);
        let differ = param.ne_tensor(&rne).sum(Kind::Int64).int64_value(&[]);
        assert!(
            differ <= 10,
            "{differ} values differ from round-to-nearest-even"
        );
        let err = (param.to_kind(Kind::Float) - &values).abs();
        let ulp_half = values.abs() * 2f64.powi(-8) + 1e-38;
        assert!(err.le_tensor(&ulp_half).all().int64_value(&[]) == 1);
    }

    #[test]
    fn f16_and_non_contiguous_parameters_keep_a_whole_copy() {
        let f16 = Tensor::ones([3, 4], (Kind::Half, tch::Device::Cpu));
        assert!(matches!(Master::new(&f16), Master::Full(_)));
        let t = Tensor::ones([3, 4], (Kind::BFloat16, tch::Device::Cpu)).tr();
        assert!(matches!(Master::new(&t), Master::Full(_)));
    }
}
