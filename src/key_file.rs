//! Reading the files a configuration names (PEM keys, JWKS documents, CA certificates), bounded
//! in size: a path that names something endless (`/dev/zero`, a FIFO left open) or huge is a
//! configuration error that names its key, not a node that never starts.

use std::io::Read;
use std::path::Path;

/// The largest key, JWKS or certificate file read.
pub(crate) const MAX_BYTES: u64 = 1024 * 1024;

/// The contents of `path`, refused past [`MAX_BYTES`]; the error says why, for the config
/// report.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let mut contents = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut contents)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if contents.len() as u64 > MAX_BYTES {
        return Err(format!(
            "{} is larger than {MAX_BYTES} bytes; is it the right file?",
            path.display()
        ));
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_and_a_missing_one_named() {
        let endless = read(Path::new("/dev/zero")).expect_err("endless");
        assert!(endless.contains("larger than"), "{endless}");
        let missing = read(Path::new("/nonexistent/key.pem")).expect_err("missing");
        assert!(
            missing.starts_with("cannot read /nonexistent/key.pem"),
            "{missing}"
        );
    }
}
