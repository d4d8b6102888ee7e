//! Tensor and key names as llama.cpp spells them (`blk.{layer}.{suffix}`,
//! `{arch}.{key}`), built in a fixed buffer without `core::fmt`: its formatting machinery
//! would be a good part of a small firmware's code, for two string joins.

/// A tensor or key name (128 bytes hold every name llama.cpp writes).
pub(crate) type Name = heapless::String<128>;

/// `blk.{layer}.{suffix}`, or `None` when it does not fit in a [`Name`] (no file we can
/// read has such a tensor).
pub(crate) fn layer_tensor(layer: usize, suffix: &str) -> Option<Name> {
    let mut name = Name::new();
    name.push_str("blk.").ok()?;
    push_decimal(&mut name, layer)?;
    name.push('.').ok()?;
    name.push_str(suffix).ok()?;
    Some(name)
}

/// `{arch}.{key}`, or `None` when it does not fit in a [`Name`].
pub(crate) fn arch_key(arch: &str, key: &str) -> Option<Name> {
    let mut name = Name::new();
    name.push_str(arch).ok()?;
    name.push('.').ok()?;
    name.push_str(key).ok()?;
    Some(name)
}

/// Appends `n` in decimal.
fn push_decimal(name: &mut Name, mut n: usize) -> Option<()> {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[start..] {
        name.push(char::from(d)).ok()?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_llama_cpp_writes_them() {
        assert_eq!(
            layer_tensor(0, "ffn_up_exps.weight").as_deref(),
            Some("blk.0.ffn_up_exps.weight")
        );
        assert_eq!(
            layer_tensor(4_294_967_295, "x").as_deref(),
            Some("blk.4294967295.x")
        );
        assert_eq!(
            arch_key("qwen3moe", "expert_count").as_deref(),
            Some("qwen3moe.expert_count")
        );
        let long = [b'k'; 124];
        let long = core::str::from_utf8(&long).unwrap();
        assert_eq!(arch_key("abc", long).map(|n| n.len()), Some(128));
        assert_eq!(arch_key("abcd", long), None);
        assert_eq!(layer_tensor(10, long), None);
    }
}
