//! Masking secret values in a task's output before it is stored or streamed: every occurrence of a value
//! the Start carried becomes `********`, also when a value is split across two reads of the output.
//!
//! The masker holds back the end of what it was given while that end could still be the start of a value
//! (at most the longest value's length less one byte), and lets it go once the next bytes, or the end of
//! the output, decide. Values shorter than [`MIN_MASKED_LEN`] bytes are not masked: masking every `a` or
//! `42` in a log would ruin it and hide nothing a reader could not guess (docs/security.md).

/// What a secret value is shown as.
pub(crate) const MASK: &[u8] = b"********";
/// Values shorter than this many bytes are not masked.
pub(crate) const MIN_MASKED_LEN: usize = 4;

/// Masks the values it was made with in a stream of output bytes.
pub(crate) struct Masker {
    /// Longest first, so that a value containing another is masked whole.
    values: Vec<Vec<u8>>,
    /// Bytes received but not yet let go: they may begin a value.
    pending: Vec<u8>,
}

impl Masker {
    /// A masker for `values` (those shorter than [`MIN_MASKED_LEN`] are left out).
    pub(crate) fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_MASKED_LEN)
            .map(|v| v.as_bytes().to_vec())
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Masker {
            values,
            pending: Vec::new(),
        }
    }

    /// The next bytes of output, masked, as far as they can be told apart from a value's start.
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.values.is_empty() {
            return data.to_vec();
        }
        self.pending.extend_from_slice(data);
        self.drain(false)
    }

    /// What is held back, masked, once the output has ended.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    fn drain(&mut self, ended: bool) -> Vec<u8> {
        let buffer = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(buffer.len());
        let mut i = 0;
        while i < buffer.len() {
            let rest = &buffer[i..];
            // A longer value may still be completed by bytes to come: wait for them.
            if !ended && self.values.iter().any(|v| v.len() > rest.len() && v.starts_with(rest)) {
                break;
            }
            if let Some(value) = self.values.iter().find(|v| rest.starts_with(v)) {
                out.extend_from_slice(MASK);
                i += value.len();
            } else {
                out.push(buffer[i]);
                i += 1;
            }
        }
        self.pending = buffer[i..].to_vec();
        out
    }
}

#[cfg(test)]
mod tests;
