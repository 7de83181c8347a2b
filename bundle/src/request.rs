//! Offline signing (bundle-format.md §3.4, §3.5): the signing request `ferry-build sign
//! --export-request` writes for an offline machine, and the detached signature file `ferry-build
//! sign-request` writes back.
//!
//! A request carries the manifest member itself, not a summary of it: the offline machine checks
//! that the bundle id is the BLAKE3 of that member and that the message to sign is the ferry
//! message for that id, decodes the manifest and shows a summary it derived itself. A request
//! whose summary was tampered with therefore cannot exist: there is no summary in it, and
//! changing the manifest changes the id the signature is for. A request never holds payload, so
//! it is the size of the manifest member plus 150 to 157 bytes.

use crate::hash::{hex, unhex};
use crate::sig::{signing_message, verify_strict, PublicKey, MESSAGE_LEN};
use crate::{Error, Hash, Limits, Manifest};
use serde::{Deserialize, Serialize};

/// The `format` field of a signing request, version 1.
pub const REQUEST_FORMAT: &str = "ferry-signing-request-v1";
/// First word of a detached signature file, version 1.
pub const SIGNATURE_TAG: &str = "ferry-signature-v1";
/// Bound on the bytes a request holds besides its manifest member: the CBOR map, its keys, the
/// format text, the id and the message take 148 bytes, the manifest byte string's head 2 to 9.
pub const REQUEST_OVERHEAD: u64 = 256;
/// The largest signature file a reader accepts (a valid one is 278 bytes).
pub const MAX_SIGNATURE_FILE: u64 = 4096;

/// The CBOR of a request: a map with these text keys in this order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    bundle_id: Hash,
    message: serde_bytes::ByteBuf,
    manifest: serde_bytes::ByteBuf,
}

/// A signing request: the manifest member of one bundle, and so its id and the message to sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningRequest {
    /// The bundle id: BLAKE3 of `manifest`.
    pub id: Hash,
    /// The manifest member's bytes exactly as in the bundle (compressed).
    pub manifest: Vec<u8>,
}

impl SigningRequest {
    /// The request for the bundle whose manifest member is `manifest`.
    pub fn new(manifest: Vec<u8>) -> SigningRequest {
        SigningRequest { id: Manifest::id(&manifest), manifest }
    }

    /// The exact bytes to sign.
    pub fn message(&self) -> [u8; MESSAGE_LEN] {
        signing_message(&self.id)
    }

    /// The request file: canonical CBOR of the map `{format, bundle_id, message, manifest}`.
    pub fn encode(&self) -> Vec<u8> {
        let w = Wire {
            format: REQUEST_FORMAT.into(),
            bundle_id: self.id,
            message: serde_bytes::ByteBuf::from(self.message().to_vec()),
            manifest: serde_bytes::ByteBuf::from(self.manifest.clone()),
        };
        let mut out = Vec::with_capacity(self.manifest.len() + REQUEST_OVERHEAD as usize);
        #[allow(clippy::unwrap_used)] // serialising into a Vec cannot fail
        ciborium::into_writer(&w, &mut out).unwrap();
        out
    }

    /// The largest request file a reader accepts under `limits`.
    pub fn max_bytes(limits: &Limits) -> u64 {
        limits.max_manifest_bytes.saturating_add(REQUEST_OVERHEAD)
    }

    /// Decode and check a request file: size, canonical CBOR, format, the id is the BLAKE3 of the
    /// manifest member, and the message is the ferry message for that id. The manifest member
    /// itself is not decoded here ([`Manifest::decode`] is the caller's next step).
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<SigningRequest, Error> {
        let max = Self::max_bytes(limits);
        if bytes.len() as u64 > max {
            return Err(Error::Request(format!("{} bytes, over the limit of {max}", bytes.len())));
        }
        let w: Wire =
            ciborium::from_reader(bytes).map_err(|e| Error::Request(format!("not a ferry signing request ({e})")))?;
        if w.format != REQUEST_FORMAT {
            return Err(Error::Request(format!(
                "unsupported format {:?} (this ferry reads {REQUEST_FORMAT})",
                w.format.chars().take(64).collect::<String>()
            )));
        }
        let r = SigningRequest { id: w.bundle_id, manifest: w.manifest.into_vec() };
        if r.manifest.len() as u64 > limits.max_manifest_bytes {
            return Err(Error::TooLarge {
                what: "manifest in the signing request".into(),
                size: r.manifest.len() as u64,
                limit: limits.max_manifest_bytes,
            });
        }
        let actual = Manifest::id(&r.manifest);
        if actual != r.id {
            return Err(Error::Request(format!(
                "its bundle id {} is not the BLAKE3 of its manifest ({actual}): the request was altered",
                r.id
            )));
        }
        if w.message[..] != r.message()[..] {
            return Err(Error::Request(format!(
                "its message to sign is not the ferry message for bundle {} (\"ferry-v6 bundle id\\0\" and the id)",
                r.id
            )));
        }
        if r.encode() != bytes {
            return Err(Error::Request("not in canonical encoding".into()));
        }
        Ok(r)
    }
}

/// A detached signature: one line `ferry-signature-v1 <bundle id> <public key> <signature>`
/// (64, 64 and 128 lower-case hex digits), LF-terminated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetachedSignature {
    pub bundle_id: Hash,
    pub key: [u8; 32],
    pub signature: [u8; 64],
}

impl DetachedSignature {
    pub fn to_text(&self) -> String {
        format!("{SIGNATURE_TAG} {} {} {}\n", self.bundle_id, hex(&self.key), hex(&self.signature))
    }

    /// Parse the one-line form (a final LF is optional; nothing else may follow).
    pub fn parse(text: &str) -> Result<DetachedSignature, Error> {
        let bad = |why: &str| Error::SignatureFile(why.into());
        let line = text.strip_suffix('\n').unwrap_or(text);
        if line.contains('\n') {
            return Err(bad("more than one line"));
        }
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() != 4 || f[0] != SIGNATURE_TAG {
            return Err(bad(&format!(
                "expected one line '{SIGNATURE_TAG} <bundle id> <public key> <signature>' (hex)"
            )));
        }
        fn field<const N: usize>(s: &str, what: &str) -> Result<[u8; N], Error> {
            unhex(s)
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::SignatureFile(format!("{what} is not {} hex digits", 2 * N)))
        }
        Ok(DetachedSignature {
            bundle_id: Hash(field::<32>(f[1], "the bundle id")?),
            key: field::<32>(f[2], "the public key")?,
            signature: field::<64>(f[3], "the signature")?,
        })
    }

    /// Check the signature over the message of its bundle id (strictly, as the applier does).
    pub fn verify(&self) -> Result<PublicKey, Error> {
        verify_strict(&self.key, &signing_message(&self.bundle_id), &self.signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sig::SecretKey;

    fn manifest_member() -> Vec<u8> {
        crate::manifest::pack(b"not checked here")
    }

    #[test]
    fn request_roundtrip_and_size() {
        let r = SigningRequest::new(manifest_member());
        let bytes = r.encode();
        assert_eq!(bytes.len(), r.manifest.len() + 150);
        assert_eq!(SigningRequest::decode(&bytes, &Limits::default()).ok(), Some(r.clone()));
        // The format name is near the start, for `file` and for humans with `head -c`.
        assert!(bytes[..40].windows(REQUEST_FORMAT.len()).any(|w| w == REQUEST_FORMAT.as_bytes()));
    }

    #[test]
    fn altered_requests_are_refused() {
        let r = SigningRequest::new(manifest_member());
        let good = r.encode();
        // A changed byte of the manifest: the id no longer matches.
        let mut m = good.clone();
        let last = m.len() - 1;
        m[last] ^= 1;
        let e = SigningRequest::decode(&m, &Limits::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("altered"), "{e}");
        // A consistent id and manifest, but another message to sign.
        let w = Wire {
            format: REQUEST_FORMAT.into(),
            bundle_id: r.id,
            message: serde_bytes::ByteBuf::from(SigningRequest::new(crate::manifest::pack(b"x")).message().to_vec()),
            manifest: serde_bytes::ByteBuf::from(r.manifest.clone()),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&w, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
        let e = SigningRequest::decode(&bytes, &Limits::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("message to sign"), "{e}");
        // Junk after the CBOR; another format; not CBOR.
        let mut junk = good.clone();
        junk.push(0);
        assert!(SigningRequest::decode(&junk, &Limits::default()).is_err());
        let v2 = good.clone();
        let pos = v2.windows(2).position(|w| w == b"v1").unwrap_or(0);
        let mut v2 = v2;
        v2[pos + 1] = b'2';
        let e = SigningRequest::decode(&v2, &Limits::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("unsupported format"), "{e}");
        assert!(SigningRequest::decode(b"hello", &Limits::default()).is_err());
        let small = Limits { max_manifest_bytes: 4, ..Limits::default() };
        assert!(SigningRequest::decode(&good, &small).is_err_and(|e| e.to_string().contains("over the limit")));
    }

    #[test]
    fn signature_file_roundtrip_and_refusals() {
        let k = SecretKey::from_seed([7; 32]);
        let id = Hash::of(b"m");
        let d = DetachedSignature { bundle_id: id, key: k.public().bytes, signature: k.sign_id(&id) };
        let text = d.to_text();
        assert_eq!(text.len(), 278);
        let p = DetachedSignature::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p, d);
        assert_eq!(p.verify().ok().map(|k| k.id), Some(k.public().id));
        let wrong = DetachedSignature { bundle_id: Hash::of(b"other"), ..d.clone() };
        assert!(matches!(wrong.verify(), Err(Error::BadSignature { .. })));
        for bad in [
            text.replace(SIGNATURE_TAG, "ferry-signature-v2"),
            format!("{text}{text}"),
            text[..text.len() - 3].to_string(),
            text.replacen(' ', "  ", 1),
            String::new(),
        ] {
            assert!(DetachedSignature::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
