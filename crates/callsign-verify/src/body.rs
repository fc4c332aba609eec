//! Answers read with a bound: a broken or hostile endpoint cannot fill the verifier's memory.

/// The body of `resp`, or `None` when it is longer than `max` bytes (read no further).
///
/// # Errors
///
/// The transport's error when the body cannot be read.
pub async fn read_bounded(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}
