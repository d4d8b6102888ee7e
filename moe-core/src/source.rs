//! [`TensorSource`]: where a model's tensors and hyper-parameters come from, under
//! llama.cpp's names. A GGUF [`File`] is one; a Hugging Face checkpoint (in `moe-std`) is
//! another, answering the same names from its own tensors and `config.json`.

use crate::gguf::{File, Value};
use crate::tensor::TensorView;

/// Tensors by llama.cpp name (`token_embd.weight`, `blk.0.attn_q.weight`, …) and metadata
/// by GGUF key (`general.architecture`, `{arch}.block_count`, …), borrowed for `'a`.
pub trait TensorSource<'a> {
    /// The metadata value of `key`, if the source has one.
    fn value(&self, key: &str) -> Option<Value<'a>>;

    /// The tensor named `name`, if the source has one.
    fn tensor(&self, name: &str) -> Option<TensorView<'a>>;

    /// A routed-expert stack (`blk.N.ffn_{gate,up,down}_exps.weight`) kept as one matrix
    /// per expert rather than one 3-D tensor, expert `e` at index `e` (each `[cols, rows]`
    /// in GGUF order). GGUF files stack their experts: `None`.
    fn expert_matrices(&self, name: &str) -> Option<&'a [TensorView<'a>]> {
        let _ = name;
        None
    }

    /// `general.architecture`.
    fn architecture(&self) -> Option<&'a str> {
        self.value(crate::gguf::ARCHITECTURE_KEY)?.as_str()
    }
}

// Not inlined: one copy of each look-up serves every call site (load time only; the
// difference is a few hundred bytes of a firmware's code).
impl<'a> TensorSource<'a> for File<'a> {
    #[inline(never)]
    fn value(&self, key: &str) -> Option<Value<'a>> {
        self.get(key)
    }

    #[inline(never)]
    fn tensor(&self, name: &str) -> Option<TensorView<'a>> {
        File::tensor(self, name).map(|t| t.view)
    }

    fn architecture(&self) -> Option<&'a str> {
        File::architecture(self)
    }
}
