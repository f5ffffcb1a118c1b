//! Credentials made by the tests themselves: signing keys generated with `openssl` (RSA 2048,
//! EC P-256, Ed25519) into a temp directory, tokens signed with them, JWKS documents, and the
//! `X-Userinfo` header an APISIX gateway would send.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::temp_file;

/// A key pair on disk: the private key signs, the public PEM goes into the server's config.
pub struct KeyPair {
    pub algorithm: Algorithm,
    pub private_pem: Vec<u8>,
    pub public_pem_file: PathBuf,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (make test-deps installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

impl KeyPair {
    /// A fresh key pair for `algorithm` (RS256, ES256 or EdDSA).
    pub fn generate(algorithm: Algorithm) -> Self {
        let generation: &[&str] = match algorithm {
            Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::EdDSA => &["-algorithm", "ed25519"],
            other => panic!("no key generation for {other:?}"),
        };
        let private_pem = openssl(&[&["genpkey"], generation].concat());
        let private_file = temp_file("private.pem", &String::from_utf8_lossy(&private_pem));
        let public_pem = openssl(&[
            "pkey",
            "-in",
            private_file.to_str().expect("path"),
            "-pubout",
        ]);
        let public_pem_file = temp_file("public.pem", &String::from_utf8_lossy(&public_pem));
        Self {
            algorithm,
            private_pem,
            public_pem_file,
        }
    }

    fn encoding_key(&self) -> EncodingKey {
        match self.algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&self.private_pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&self.private_pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&self.private_pem),
            other => panic!("no key for {other:?}"),
        }
        .expect("encoding key")
    }

    /// Signs `claims`, naming `kid` in the header when given.
    pub fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding_key()).expect("sign")
    }

    /// The public key as a JWK of any family, named `kid` and pinned to its algorithm.
    pub fn jwk(&self, kid: &str) -> Value {
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding_key(), self.algorithm)
                .expect("jwk");
        jwk.common.key_id = Some(kid.to_owned());
        serde_json::to_value(jwk).expect("jwk json")
    }

    /// The public key as a JWK (RSA keys only), named `kid`.
    pub fn rsa_jwk(&self, kid: &str) -> Value {
        let path = self.public_pem_file.to_str().expect("path");
        let modulus = String::from_utf8(openssl(&[
            "rsa", "-pubin", "-in", path, "-modulus", "-noout",
        ]))
        .expect("utf-8");
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&hex[index..index + 2], 16).expect("hex"))
            .collect();
        json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
            "e": "AQAB",
        })
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    switchboard::auth::unix_now()
}

/// Claims for `user` from the test issuer to the test audience, valid for `seconds`.
pub fn claims(user: &str, seconds: i64) -> Value {
    json!({
        "sub": user,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() as i64 + seconds,
        "iat": now(),
    })
}

pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "switchboard";

/// An HS256 token signed with `secret`.
pub fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

/// A token with `alg: none` and no signature.
pub fn unsigned(claims: &Value) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
        engine.encode(claims.to_string())
    )
}

/// APISIX's `X-Userinfo`: base64 of the userinfo JSON.
pub fn userinfo(value: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}

/// The `[auth.jwt]` section verifying with `key`.
/// The private key of `key` in a PEM file (for the load tool, which signs its own tokens).
pub fn temp_private_key(key: &KeyPair) -> PathBuf {
    temp_file("private.pem", &String::from_utf8_lossy(&key.private_pem))
}

pub fn jwt_section(key: &KeyPair, extra: &str) -> String {
    format!(
        "[auth.jwt]\npublic_key_file = {:?}\nissuer = {ISSUER:?}\naudience = [{AUDIENCE:?}]\n{extra}\n",
        key.public_pem_file.to_str().expect("path")
    )
}

/// A CA made for one test and a certificate it signed for `127.0.0.1` (servers started by the
/// tests: TLS Redis, the HTTPS identity provider).
pub struct LoopbackTls {
    pub ca_pem: String,
    pub certificate_pem: String,
    pub certificate_der: Vec<u8>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

/// Makes a CA named `ca_name` and a `127.0.0.1` certificate signed by it.
pub fn loopback_tls(ca_name: &str) -> LoopbackTls {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    // OpenSSL (redis-cli) matches the server certificate's issuer by name.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let key = rcgen::KeyPair::generate().expect("server key");
    let certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    LoopbackTls {
        ca_pem: ca.pem(),
        certificate_pem: certificate.pem(),
        certificate_der: certificate.der().to_vec(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}
