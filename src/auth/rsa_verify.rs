//! RSA signature checks for JWTs (RS256/384/512, PS256/384/512) through `ring`, installed as
//! jsonwebtoken's process-wide crypto provider; every other algorithm stays with RustCrypto.
//!
//! Why: RustCrypto's `rsa` verifies an RSA-2048 signature in about 160 µs here (generic
//! big-number code), which capped a node at about 3,400 RS256 handshakes per CPU-second. ring
//! does the same check in a fraction of that, and it is already in the build (rustls uses it).
//! ring refuses RSA keys shorter than 2048 bits, which is what a server should do anyway.

use std::sync::{LazyLock, OnceLock};

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, rust_crypto};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use ring::signature::{self as ring_signature, RsaParameters};

/// RustCrypto's provider with RSA verification replaced.
static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    verifier_factory: new_verifier,
    ..rust_crypto::DEFAULT_PROVIDER.clone()
});

/// Installs the provider for this process (once; later calls do nothing). Returns whether RSA
/// goes through ring: `false` only if something installed another provider first.
pub(super) fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let provider: &'static CryptoProvider = LazyLock::force(&PROVIDER);
        match provider.install_default() {
            Ok(()) => true,
            Err(other) => std::ptr::eq(other, provider),
        }
    })
}

fn parameters(algorithm: Algorithm) -> Option<&'static RsaParameters> {
    Some(match algorithm {
        Algorithm::RS256 => &ring_signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &ring_signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &ring_signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &ring_signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &ring_signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &ring_signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn new_verifier(
    algorithm: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    let Some(parameters) = parameters(*algorithm) else {
        return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key);
    };
    if key.family() != AlgorithmFamily::Rsa {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let key = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => RsaKey::Der(der.clone()),
        DecodingKeyKind::RsaModulusExponent { n, e } => RsaKey::Components {
            n: n.clone(),
            e: e.clone(),
        },
    };
    Ok(Box::new(RingRsa {
        algorithm: *algorithm,
        parameters,
        key,
    }))
}

enum RsaKey {
    /// PKCS#1 `RSAPublicKey` DER, as jsonwebtoken stores a PEM key.
    Der(Vec<u8>),
    /// Big-endian modulus and exponent, as a JWK gives them.
    Components { n: Vec<u8>, e: Vec<u8> },
}

struct RingRsa {
    algorithm: Algorithm,
    parameters: &'static RsaParameters,
    key: RsaKey,
}

impl Verifier<Vec<u8>> for RingRsa {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let checked =
            match &self.key {
                RsaKey::Der(der) => ring_signature::UnparsedPublicKey::new(self.parameters, der)
                    .verify(message, signature),
                RsaKey::Components { n, e } => ring_signature::RsaPublicKeyComponents { n, e }
                    .verify(self.parameters, message, signature),
            };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingRsa {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}
