//! Helpers shared by the fuzz targets (oracles that must not reuse the code
//! under test).
#![forbid(unsafe_code)]

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A JSON value that keeps every entry of an object, duplicates included and
/// in order (serde_json's `Value` keeps only the last of duplicate keys; a
/// first-wins parser upstream would see the first).
#[derive(Debug)]
pub enum RawJson {
    Object(Vec<(String, RawJson)>),
    Array(Vec<RawJson>),
    Str(String),
    Scalar,
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawJson;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<RawJson, E> {
                Ok(RawJson::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<RawJson, E> {
                Ok(RawJson::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<RawJson, E> {
                Ok(RawJson::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<RawJson, E> {
                Ok(RawJson::Scalar)
            }
            fn visit_str<E>(self, s: &str) -> Result<RawJson, E> {
                Ok(RawJson::Str(s.to_owned()))
            }
            fn visit_unit<E>(self) -> Result<RawJson, E> {
                Ok(RawJson::Scalar)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawJson, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(RawJson::Array(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<RawJson, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, RawJson>()? {
                    v.push((k, x));
                }
                Ok(RawJson::Object(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn is_auth(k: &str) -> bool {
    k.eq_ignore_ascii_case("authorization")
}

/// Paths (for messages) of every `authorization` key, any case, at the top
/// level, in any `payload` object (any case) and in any `extensions` object
/// (any case) inside one, counting every duplicate entry.
pub fn auth_key_paths(raw: &RawJson) -> Vec<String> {
    let mut out = Vec::new();
    let RawJson::Object(top) = raw else {
        return out;
    };
    for (k, v) in top {
        if is_auth(k) {
            out.push(k.clone());
        }
        if k.eq_ignore_ascii_case("payload") {
            if let RawJson::Object(p) = v {
                for (pk, pv) in p {
                    if is_auth(pk) {
                        out.push(format!("{k}.{pk}"));
                    }
                    if pk.eq_ignore_ascii_case("extensions") {
                        if let RawJson::Object(e) = pv {
                            for (ek, _) in e {
                                if is_auth(ek) {
                                    out.push(format!("{k}.{pk}.{ek}"));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Same as [`auth_key_paths`] on a parsed `serde_json` object (last of
/// duplicate keys wins, as the relay sees it).
pub fn auth_key_paths_value(v: &serde_json::Value) -> Vec<String> {
    let s = v.to_string();
    match serde_json::from_str::<RawJson>(&s) {
        Ok(raw) => auth_key_paths(&raw),
        Err(_) => Vec::new(),
    }
}

/// Whether `hay` contains `needle` as a substring, where an empty needle never
/// counts.
pub fn contains_nonempty(hay: &str, needle: &str) -> bool {
    !needle.is_empty() && hay.contains(needle)
}
