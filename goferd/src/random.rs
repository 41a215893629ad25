//! Random hex strings from the system's secure source, for what `goferd` mints: tokens, cluster ids and
//! the per-start suffix of a lease holder's name. It keeps no state and decides no format beyond hex.

/// `bytes` random bytes as lowercase hex.
pub(crate) fn hex(bytes: usize) -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
